"""What a claim kind is: one `Claim` record holding everything about it, and the registry.

A claim record names the variants it compares, the study tables it reads, what its study must
contain for the test to be fair (learning rates, a grid, an activation), whether its effect is
paired (treated minus reference) or one variant's own value, whether it gives one set of rows per
variant, and its rows: each a measure over one part of training with the side of a threshold that
supports the claim. The config check, the claims table, the schema and the README's results prose
all read these records; nothing else lists claim kinds.

Records live in the modules of `bnstudy.claims.kinds` (one per family: accuracy, ICS,
landscape, noise, Hessian, normalisers, scale invariance), each exporting `CLAIMS`; every module
there is loaded on first use. Code outside the package adds a kind with `register`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config.claim_rules import ClaimRules
from .windows import FINAL, INITIALISATION

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
# a measurement, not a verdict: the row's source states no finding for it (a control, a variant the
# source did not study, initialisation): the table gives its effect and interval and nothing more
REPORTED = "reported"
MEASUREMENT = "a measurement, not a verdict: "  # how a reported row's reason begins
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, REPORTED)


def zero(rules: ClaimRules) -> float:
    return 0.0


@dataclass(frozen=True)
class Row:
    """One row of a claim: a measure over one part of training, and which side of a threshold
    supports the claim. Its key in the table is <claim kind>.<name>.<window>."""

    name: str
    measure: str
    metric: Callable  # (StudyView, variant, ClaimRules) -> Series indexed by condition (levels include seed)
    holds: str  # "above" or "below" the threshold, or "within" a band (low, high)
    window: str = FINAL
    exact: bool = False  # a measure on a grid: exact sign-flip test instead of a t interval
    threshold: Callable[[ClaimRules], float | tuple[float, float]] = zero
    unit: str = "log10 ratio"  # "log10 ratio", "accuracy", "share", "difference", "value"
    variant: str | None = None  # an unpaired claim's row about another variant than the treated one
    reported: bool = False  # a measurement beside the claim (its source states no finding for it)
    paired: bool | None = None  # None: the claim's; False: the row's variant's own value in a paired claim
    # (view, rules) -> why this study's data make the row a measurement rather than a test, or None
    # (e.g. a network that starts above the edge has no crossing to test)
    measured_only: Callable | None = None

    def seeds_needed(self, rules: ClaimRules) -> int:
        """The fewest seeds with which this row's test can decide: an exact sign-flip test over n
        seeds cannot go below p = 1/2^n, so it needs 2^-n <= alpha (5 at alpha 0.05); a t interval
        needs `rules.t_interval_seeds` (with 2, df = 1 and t = 12.7)."""
        if self.exact:
            return max(2, math.ceil(math.log2(1 / rules.alpha) - 1e-9))
        return rules.t_interval_seeds

    @property
    def test(self) -> str:
        return "exact sign-flip test" if self.exact else "t interval"


@dataclass(frozen=True)
class Claim:
    """A claim kind: what it says, whose finding it tests, what it needs and its rows."""

    kind: str
    claim: str
    source: str
    paper: str
    rows: tuple[Row, ...]
    # what the papers found, as the verdict each predicts: (source, verdict), e.g. 2015 claims BN
    # reduces ICS ("supported"), 2018 finds it does not ("not supported")
    findings: tuple[tuple[str, str], ...] = ()
    variants: tuple[str, str] = ("batchnorm", "standard")  # (treated, reference)
    tables: tuple[str, ...] = ()  # study tables besides runs.csv
    min_lrs: int = 1  # a learning-rate grid of at least this size
    grid: str | tuple[str, ...] | None = None  # a setup key the study must vary (a tuple: any one of them)
    activation: str | None = None  # the setup's non-linearity
    per_variant: bool = False  # one set of rows per variant of the study against the reference
    paired: bool = True  # False: the treated variant's own values (the reference only must train)
    must_train: str | None = "standard"  # None: a measure at initialisation, which training does not enter
    checks: tuple[Callable, ...] = ()  # (StudyView, Claim, ClaimRules) -> why it cannot be tested, or None
    design: tuple[Callable[[Mapping, Mapping], str | None], ...] = ()  # (study, setup) -> config problem
    treated_variant: str | None = None  # set per variant for a per-variant claim

    @property
    def treated(self) -> str:
        return self.treated_variant or self.variants[0]

    @property
    def reference(self) -> str:
        return self.variants[1]

    def for_variant(self, variant: str) -> "Claim":
        """A per-variant claim's rows for one variant against the reference."""
        return dataclasses.replace(self, treated_variant=variant)

    def row_paired(self, row: Row) -> bool:
        return self.paired if row.paired is None else row.paired

    def is_reported(self, row: Row) -> bool:
        """A measurement, not a verdict: the row says so, the claim's sources state no finding, or
        it is the step-0 value of a measure over training (the papers speak of training; at step 0
        the networks differ by their initial gradient scale)."""
        return row.reported or not self.findings or row.window == INITIALISATION

    def agreement(self, row: Row, verdict: str) -> str:
        """Which papers' findings a verdict agrees with (a reported measurement is compared with none)."""
        if self.is_reported(row) or verdict == REPORTED:
            return ""
        if verdict == INCONCLUSIVE:
            return "undecided"
        return "; ".join(f"{'agrees with' if verdict == expected else 'disagrees with'} {source}"
                         for source, expected in self.findings)

    def rule(self, row: Row, rules: ClaimRules) -> str:
        threshold = row.threshold(rules)
        other = "below" if row.holds == "above" else "above"
        test = (f"exact one-sided sign-flip test over seeds at alpha {rules.alpha:g}" if row.exact else
                "95% t interval over seeds (exact sign-flip test when the seeds agree exactly)")
        effect = (f"{self.treated} minus {self.reference}, paired by seed" if self.row_paired(row)
                  else f"{row.variant or self.treated}'s value per seed")
        if row.holds == "within":
            low, high = tuple(threshold)
            return (f"effect = {effect}; 95% t interval over seeds; supported if it lies within [{low:g},"
                    f" {high:g}], not supported if entirely outside; inconclusive if it crosses an edge or"
                    f" with < 2 seeds")
        return (f"effect = {effect}; {test}; supported if the effect lies {row.holds} {threshold:g}, not"
                f" supported if at or {other}; inconclusive if undecided, with < 2 seeds, runs <"
                f" {rules.min_steps} steps" + (f", or {self.must_train} never training" if self.must_train else ""))

    def seeds_needed(self, rules: ClaimRules) -> int:
        """The fewest seeds with which every row of the claim can reach a decision (`Row.seeds_needed`)."""
        return max(row.seeds_needed(rules) for row in self.rows)

    def undecidable_rows(self, seeds: int, rules: ClaimRules) -> list[tuple[Row, int]]:
        """The rows that `seeds` seeds cannot decide, each with the seeds it needs."""
        return [(row, need) for row in self.rows if seeds < (need := row.seeds_needed(rules))]

    def design_problem(self, study: Mapping, setup: Mapping) -> str | None:
        """Why a study cannot test this claim by design (None if it can): a config error."""
        treated, reference = self.variants
        if self.per_variant:
            others = [v for v in study["variants"] if v != reference]
            if reference not in study["variants"] or not others:
                return f"it compares each variant with {reference}: give the study {reference} and others"
        missing = [] if self.per_variant else [v for v in self.variants if v not in study["variants"]]
        if missing:
            return f"it compares {treated} with {reference}: add {missing} to the study's variants"
        if len(study["lrs"]) < self.min_lrs:
            return (f"it compares each variant at its own best learning rate: give the study at least "
                    f"{self.min_lrs} lrs")
        keys = (self.grid,) if isinstance(self.grid, str) else self.grid or ()
        if keys and max(len(study["grid"].get(key, [])) for key in keys) < 2:
            return (f"it compares runs over {' or '.join(keys)}: give the study grid: {{{keys[0]}: [two or more"
                    f" values]}}")
        if self.activation and setup["model"]["activation"] != self.activation:
            return f"it is about {self.activation} networks: set model.activation: {self.activation}"
        return next((problem for check in self.design if (problem := check(study, setup))), None)

    def study_tables(self) -> tuple[str, ...]:
        """Every study table the claim reads: runs.csv and its own."""
        return ("runs",) + self.tables


# ---------------------------------------------------------------------------------------------
# the registry


_REGISTRY: dict[str, Claim] = {}
_LOADED = [False]


def register(*claims: Claim) -> None:
    """Add claim kinds (a module outside `bnstudy.claims.kinds` extends the project this way)."""
    for claim in claims:
        if claim.kind in _REGISTRY and _REGISTRY[claim.kind] is not claim:
            raise ValueError(f"claim kind {claim.kind!r} is registered twice")
        _REGISTRY[claim.kind] = claim


def _load() -> None:
    if _LOADED[0]:
        return
    _LOADED[0] = True
    from . import kinds

    for module in sorted(m.name for m in pkgutil.iter_modules(kinds.__path__)):
        register(*importlib.import_module(f"{kinds.__name__}.{module}").CLAIMS)


def claims_by_kind() -> dict[str, Claim]:
    """Every registered claim kind (the modules of `bnstudy.claims.kinds` and `register`ed ones)."""
    _load()
    return dict(_REGISTRY)


def get(kind: str) -> Claim:
    claims = claims_by_kind()
    if kind not in claims:
        raise KeyError(f"no claim kind {kind!r}; known: {', '.join(sorted(claims))}")
    return claims[kind]
