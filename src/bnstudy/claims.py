"""Per-study tables -> one verdict per claim (``claims.csv`` + ``claims.md``).

Claims tested: the four claims of Ioffe & Szegedy 2015 (higher learning rates, less sensitivity to
initialisation, regularisation, usable sigmoids) and three findings of Santurkar et al. 2018 (BN
does not reduce internal covariate shift, BN smooths the loss landscape, noisy BN trains about as
well as BN). Reads tables only; never imports torch.

Effect
    For each claim a per-run measure is computed for the treated variant (batchnorm, or
    noisy_batchnorm) and the reference variant (standard, or batchnorm). The two are paired on
    everything but the variant (seed, lr, grid values), differenced (treated minus reference;
    measures that are ratios are taken in log10 first, so the effect is a log10 ratio), and the
    paired differences are averaged within each seed. Seeds are the unit: ``effect`` is the mean
    of the per-seed differences and ``ci_low``..``ci_high`` its 95% Student-t interval over seeds.

Verdict rule (every claim has a threshold T and a side: the claim holds "above" or "below" T)
    * supported      -- the whole 95% CI lies strictly on the claim's side of T;
    * not supported  -- the whole 95% CI lies on the other side of T (touching T counts here:
      no effect is not support);
    * inconclusive   -- the CI straddles T, or fewer than 2 paired seeds, or the study is
      disabled / not configured / its tables are missing, or the runs are too short (the longest
      run did fewer than ``min_steps`` updates), or the network that must train never leaves
      chance (final train accuracy never above ``chance_accuracy + chance_margin``; for regression
      the training loss never falls by ``min_loss_drop``), or a claim-specific design check fails
      (e.g. the learning-rate grid has one value, or standard still trains at its largest rate).
      The ``reason`` column says which.

For "BN reduces ICS" the effect is log10(ICS with BN / ICS without): Santurkar et al. conclude BN
does NOT reduce ICS, so data where BN's ICS is not lower gives "not supported", which agrees with
the 2018 paper. Thresholds and gates live in :class:`ClaimRules`; a study may override them under
``claim_rules`` in its config block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bnstudy.aggregate import (
    ANALYSIS_COLUMNS, LABEL_COLUMNS, RUN_TABLE_COLUMNS, RUNS_COLUMNS_AFTER_GRID, TableError,
    grid_columns, read_table, write_csv, write_text,
)
from bnstudy.stats import mean_ci, paired_differences

COLUMNS = ["claim", "source", "study", "measure", "effect", "ci_low", "ci_high", "n_seeds",
           "paper", "verdict", "rule", "reason"]
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class ClaimRules:
    """Gates and thresholds of the verdict rule; per study overridable via ``claim_rules``."""

    min_steps: int = 1000            # shorter runs cannot speak to any claim
    chance_accuracy: float = 0.1     # CIFAR-10 and MNIST have 10 balanced classes
    chance_margin: float = 0.05      # "left chance" = accuracy above chance + margin
    min_loss_drop: float = 0.01      # regression: the loss must fall by this fraction to count as training
    usable_fraction: float = 0.5     # lr usable if accuracy >= chance + fraction * (best - chance)
    noninferiority_margin: float = 0.05  # "about as well": at most 5 accuracy points worse

    def overridden(self, overrides: Mapping | None) -> "ClaimRules":
        unknown = set(overrides or {}) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown claim_rules keys {sorted(unknown)}")
        return dataclasses.replace(self, **dict(overrides or {}))


# ---------------------------------------------------------------------------------------------
# data


class StudyData:
    """One study's tables (read on first use) and config."""

    def __init__(self, tables_dir: Path, study_cfg: dict):
        self.tables_dir = Path(tables_dir)
        self.study_cfg = study_cfg
        self.grid = list(grid_columns(study_cfg).values())
        self._cache: dict[str, pd.DataFrame] = {}

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            schema = {"runs": RUNS_COLUMNS_AFTER_GRID, **RUN_TABLE_COLUMNS, **ANALYSIS_COLUMNS}[name]
            frame = read_table(self.tables_dir / f"{name}.csv", LABEL_COLUMNS + schema)
            self._cache[name] = frame.replace([np.inf, -np.inf], np.nan)
        return self._cache[name]

    @property
    def runs(self) -> pd.DataFrame:
        return self.table("runs")

    def condition_keys(self, exclude: Sequence[str] = ()) -> list[str]:
        """What pairs a treated run with its reference: seed, lr and grid values."""
        return [k for k in ["seed", "lr", *self.grid] if k not in exclude and k in self.runs.columns]

    def is_regression(self) -> bool:
        task = self.runs.get("task")
        if task is not None and task.notna().any():
            return bool((task == "regression").all())
        return not self.runs["final_train_accuracy"].notna().any()


def indexed_by_condition(runs: pd.DataFrame, values, keys: Sequence[str]) -> pd.Series:
    """``values`` (one per row of ``runs``) indexed by the rows' condition (seed, lr, grid values),
    the key that pairs a treated run with its reference."""
    return pd.Series(np.asarray(values, dtype=float), index=pd.MultiIndex.from_frame(runs[list(keys)]))


def by_condition(values_by_run: pd.Series, data: StudyData) -> pd.Series:
    """Per-run values (indexed by run id, e.g. from an analysis table) indexed by condition."""
    runs = data.runs.set_index("run").loc[values_by_run.index].reset_index()
    return indexed_by_condition(runs, values_by_run.to_numpy(), data.condition_keys())


def group_by_keys(values: pd.Series, runs: pd.DataFrame, keys: Sequence[str]):
    """``values`` (aligned with ``runs``) grouped by the condition columns ``keys``."""
    return values.groupby([runs[k] for k in keys], dropna=False)


def with_multiindex(series: pd.Series, keys: Sequence[str]) -> pd.Series:
    """Force a (possibly one-level) MultiIndex named ``keys``, so every measure pairs the same way."""
    if isinstance(series.index, pd.MultiIndex):
        return series
    return series.set_axis(pd.MultiIndex.from_arrays([series.index], names=list(keys)))


def accuracy_or_chance(runs: pd.DataFrame, column: str, rules: ClaimRules) -> pd.Series:
    """Final accuracy per run; a diverged run counts as chance (it learnt nothing usable)."""
    return runs[column].where(runs["status"] != "diverged", rules.chance_accuracy)


# ---------------------------------------------------------------------------------------------
# per-variant measures: (data, variant, rules) -> Series indexed by condition (levels include seed)


def final_accuracy_measure(column: str) -> Callable[[StudyData, str, ClaimRules], pd.Series]:
    """Final accuracy of each run of ``variant`` (diverged = chance)."""

    def measure(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        runs = data.runs[data.runs["variant"] == variant]
        return indexed_by_condition(runs, accuracy_or_chance(runs, column, rules), data.condition_keys())

    return measure


def largest_usable_log_lr(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """log10 of the largest lr at which ``variant`` completes with a usable test accuracy.

    Usable = completed and final test accuracy >= chance + usable_fraction * (best - chance), the
    best taken over the whole study, so both variants face the same bar. A condition with no usable
    lr scores one grid step below the smallest lr.
    """
    runs = data.runs
    best = runs["final_test_accuracy"].max()
    bar = rules.chance_accuracy + rules.usable_fraction * (best - rules.chance_accuracy)
    mine = runs[runs["variant"] == variant]
    usable = mine[(mine["status"] == "completed") & (mine["final_test_accuracy"] >= bar)]
    keys = data.condition_keys(exclude=["lr"])
    log_lrs = np.log10(np.sort(runs["lr"].unique()))
    floor = log_lrs[0] - (np.median(np.diff(log_lrs)) if len(log_lrs) > 1 else 1.0)
    conditions = pd.MultiIndex.from_frame(mine[keys].drop_duplicates())
    largest = group_by_keys(np.log10(usable["lr"]), usable, keys).max()
    return with_multiindex(largest, keys).reindex(conditions).fillna(floor)


def accuracy_spread_over_init(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Max minus min final test accuracy over the init scales (diverged = chance)."""
    runs = data.runs[data.runs["variant"] == variant].copy()
    runs["accuracy"] = accuracy_or_chance(runs, "final_test_accuracy", rules)
    keys = data.condition_keys(exclude=["init_scale"])
    grouped = group_by_keys(runs["accuracy"], runs, keys)
    return with_multiindex(grouped.max() - grouped.min(), keys)


def generalisation_gap(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Final train minus test accuracy of completed runs, at the lowest dropout if dropout varies."""
    runs = data.runs[(data.runs["variant"] == variant) & (data.runs["status"] == "completed")]
    if "dropout" in runs.columns:
        runs = runs[runs["dropout"] == data.runs["dropout"].min()]
    gap = runs["final_train_accuracy"] - runs["final_test_accuracy"]
    return indexed_by_condition(runs, gap, data.condition_keys())


def mean_log10_per_run(frame: pd.DataFrame, column: str) -> pd.Series:
    """Mean over rows of log10(column) per run, over finite positive values only."""
    values = frame[column]
    keep = values.notna() & (values > 0)
    return np.log10(values[keep]).groupby(frame.loc[keep, "run"]).mean()


def ics_log_l2(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Mean over steps and the configured layers of log10 ||G - G'||_2."""
    ics = data.table("ics")
    ics = ics[ics["variant"] == variant]
    if data.study_cfg.get("layers"):
        ics = ics[ics["layer"].isin([int(x) for x in data.study_cfg["layers"]])]
    return by_condition(mean_log10_per_run(ics, "l2_diff"), data)


def landscape_log_beta(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Mean over steps of log10 of the effective beta-smoothness (max over eta along the gradient)."""
    landscape = data.table("landscape")
    landscape = landscape[(landscape["variant"] == variant) & (landscape["direction"] == "gradient")]
    beta = landscape.groupby(["run", "step"], as_index=False)["beta"].max()
    return by_condition(mean_log10_per_run(beta, "beta"), data)


# ---------------------------------------------------------------------------------------------
# checks: (data, claim, rules) -> reason the claim cannot be tested, or None


def runs_long_enough(data: StudyData, claim: "Claim", rules: ClaimRules) -> str | None:
    longest = data.runs["steps_done"].max()
    if not longest >= rules.min_steps:
        return f"runs too short: the longest did {longest} steps < min_steps {rules.min_steps}"
    return None


def network_trains(data: StudyData, claim: "Claim", rules: ClaimRules) -> str | None:
    """The ``must_train`` variant must leave chance in at least one run, else nothing was learnt."""
    runs = data.runs[data.runs["variant"] == claim.must_train]
    if data.is_regression():
        train = data.table("train")
        losses = train[train["variant"] == claim.must_train].sort_values("step").dropna(subset=["loss"])
        ends = losses.groupby("run")["loss"].agg(["first", "last"])
        if (ends["last"] <= (1 - rules.min_loss_drop) * ends["first"]).any():
            return None
        return f"{claim.must_train} never lowers its training loss by {rules.min_loss_drop:.0%}"
    if (runs["final_train_accuracy"] > rules.chance_accuracy + rules.chance_margin).any():
        return None
    return (f"{claim.must_train} never leaves chance (final train accuracy never above "
            f"{rules.chance_accuracy + rules.chance_margin:g})")


def varies(column: str) -> Callable[[StudyData, "Claim", ClaimRules], str | None]:
    def check(data: StudyData, claim: "Claim", rules: ClaimRules) -> str | None:
        values = data.runs[column].nunique() if column in data.runs.columns else 0
        return None if values >= 2 else f"the study varies {column} over {values} value(s); needs >= 2"

    return check


def reference_fails_within_grid(data: StudyData, claim: "Claim", rules: ClaimRules) -> str | None:
    """If the reference is still usable at the largest lr, the grid cannot show a higher one for BN."""
    top = np.log10(data.runs["lr"].max())
    reference = largest_usable_log_lr(data, claim.reference, rules)
    if np.isclose(reference, top).any():
        return (f"{claim.reference} is still usable at the largest learning rate "
                f"({10 ** top:g}): the grid is too narrow to show a higher usable rate")
    return None


# ---------------------------------------------------------------------------------------------
# the claims


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    study: str
    measure: str
    paper: str
    metric: Callable[[StudyData, str, ClaimRules], pd.Series]
    holds: str  # "above" or "below" the threshold
    treated: str = "batchnorm"
    reference: str = "standard"
    must_train: str = "standard"
    threshold: Callable[[ClaimRules], float] = lambda rules: 0.0
    checks: tuple[Callable[[StudyData, "Claim", ClaimRules], str | None], ...] = ()

    def rule(self, rules: ClaimRules) -> str:
        threshold = self.threshold(rules)
        other = "below" if self.holds == "above" else "above"
        return (f"effect = {self.treated} minus {self.reference}, paired by seed; supported if the"
                f" 95% CI lies entirely {self.holds} {threshold:g}; not supported if it lies entirely"
                f" at or {other} {threshold:g}; inconclusive if it straddles {threshold:g}, with < 2"
                f" seeds, runs < {rules.min_steps} steps, or {self.must_train} never training")


_PAIRING = "{treated} minus {reference}, paired by seed, lr and grid values, averaged per seed"

CLAIMS: list[Claim] = [
    Claim(
        "BN allows higher learning rates", "2015", "claim_learning_rate",
        "log10 of the largest lr whose run completes with final test accuracy >= chance +"
        " usable_fraction x (best - chance); batchnorm minus standard per seed (log10 ratio)",
        "2015: BN enables much higher learning rates; BN-x5 (5x the lr) reaches the Inception"
        " baseline's 72.2% in 14x fewer steps and BN-x30 (30x) also trains",
        largest_usable_log_lr, "above",
        checks=(varies("lr"), reference_fails_within_grid)),
    Claim(
        "BN makes training less sensitive to initialisation", "2015", "claim_initialisation",
        "spread (max - min) of final test accuracy over init scales (diverged = chance); "
        + _PAIRING.format(treated="batchnorm", reference="standard"),
        "2015: with BN one can be less careful about initialisation (no number given)",
        accuracy_spread_over_init, "below", checks=(varies("init_scale"),)),
    Claim(
        "BN regularises", "2015", "claim_regularisation",
        "generalisation gap (final train - test accuracy) of completed runs at the lowest dropout; "
        + _PAIRING.format(treated="batchnorm", reference="standard"),
        "2015: BN regularises, BN-Inception trains without dropout and without more overfitting;"
        " 2018: test accuracy 83% with BN vs 80% without (CIFAR-10, VGG)",
        generalisation_gap, "below"),
    Claim(
        "BN makes sigmoid networks usable", "2015", "claim_sigmoid",
        "final test accuracy of sigmoid networks (diverged = chance); "
        + _PAIRING.format(treated="batchnorm", reference="standard"),
        "2015: a sigmoid Inception with BN reaches 69.8% top-1; without BN it never trains",
        final_accuracy_measure("final_test_accuracy"), "above", must_train="batchnorm"),
    *[Claim(
        "BN reduces internal covariate shift", "2018", study,
        "mean over steps and configured layers of log10 ||G - G'||_2 (Definition 2.1); "
        + _PAIRING.format(treated="batchnorm", reference="standard") + " (log10 ratio)",
        f"2018 (Fig. 3, {net}): BN does NOT reduce ICS; BN networks often show larger ||G - G'||"
        " and, in the DLN, a cosine near 0",
        ics_log_l2, "below") for study, net in (("ics", "VGG"), ("ics_dln", "DLN"))],
    *[Claim(
        "BN smooths the loss landscape", "2018", study,
        "mean over steps of log10 effective beta-smoothness (max over eta along the gradient); "
        + _PAIRING.format(treated="batchnorm", reference="standard") + " (log10 ratio)",
        f"2018 ({fig}): without BN the loss varies widely early, gradient predictiveness is ~2 orders"
        " of magnitude worse early on, beta-smoothness is consistently worse",
        landscape_log_beta, "below") for study, fig in (("landscape", "Fig. 4, VGG"),
                                                        ("landscape_dln", "Fig. 10, DLN"))],
    Claim(
        "Noisy BN trains about as well as BN", "2018", "noisy_bn",
        "final train accuracy (diverged = chance); "
        + _PAIRING.format(treated="noisy_batchnorm", reference="batchnorm")
        + "; holds if not worse than -noninferiority_margin",
        "2018 (Fig. 2): noisy BN trains almost as well as BN and better than standard, despite"
        " unstable distributions; standard + noise fails to train",
        final_accuracy_measure("final_train_accuracy"), "above", treated="noisy_batchnorm",
        reference="batchnorm", must_train="batchnorm",
        threshold=lambda rules: -rules.noninferiority_margin),
]


# ---------------------------------------------------------------------------------------------
# verdicts


def decide(effect_low: float, effect_high: float, n_seeds: int, threshold: float, holds: str,
           blockers: Sequence[str] = ()) -> tuple[str, str]:
    """The verdict rule of the module docstring: (verdict, reason)."""
    if blockers:
        return INCONCLUSIVE, "; ".join(blockers)
    if n_seeds < 2:
        return INCONCLUSIVE, f"{n_seeds} paired seed(s) < 2: no confidence interval"
    if holds == "above":
        supported, against, other = effect_low > threshold, effect_high <= threshold, "below"
    elif holds == "below":
        supported, against, other = effect_high < threshold, effect_low >= threshold, "above"
    else:
        raise ValueError(f"holds must be 'above' or 'below', got {holds!r}")
    interval = f"95% CI [{effect_low:.3g}, {effect_high:.3g}]"
    if supported:
        return SUPPORTED, f"{interval} entirely {holds} {threshold:g}"
    if against:
        return NOT_SUPPORTED, f"{interval} entirely at or {other} {threshold:g}"
    return INCONCLUSIVE, f"{interval} straddles {threshold:g}"


def seed_effects(data: StudyData, claim: Claim, rules: ClaimRules) -> pd.Series:
    """Per-seed mean of the paired treated-minus-reference differences."""
    differences = paired_differences(claim.metric(data, claim.treated, rules),
                                     claim.metric(data, claim.reference, rules))
    if differences.empty:
        return pd.Series(dtype=float)
    return differences.groupby(level="seed").mean()


def evaluate(claim: Claim, tables_root: Path, studies_cfg: Mapping, rules: ClaimRules) -> dict:
    """One claims-table row."""
    study_cfg = studies_cfg.get(claim.study)
    rules = rules.overridden((study_cfg or {}).get("claim_rules"))
    row = {"claim": claim.claim, "source": claim.source, "study": claim.study,
           "measure": claim.measure, "effect": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "n_seeds": 0, "paper": claim.paper, "rule": claim.rule(rules)}
    if not study_cfg or not study_cfg.get("enabled", True):
        reason = f"study {claim.study} is disabled or not configured"
        return {**row, "verdict": INCONCLUSIVE, "reason": reason}
    data = StudyData(Path(tables_root) / claim.study, study_cfg)
    effects = pd.Series(dtype=float)
    try:
        present = set(data.runs["variant"])
        blockers = [f"no {v} runs in {data.tables_dir / 'runs.csv'}"
                    for v in (claim.treated, claim.reference) if v not in present]
        if not blockers:
            blockers = [reason for check in (runs_long_enough, network_trains, *claim.checks)
                        if (reason := check(data, claim, rules))]
            effects = seed_effects(data, claim, rules)
    except TableError as error:
        blockers = [f"tables missing or malformed: {error}"]
    interval = mean_ci(effects)
    verdict, reason = decide(interval.low, interval.high, interval.n, claim.threshold(rules),
                             claim.holds, blockers)
    return {**row, "effect": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
            "n_seeds": interval.n, "verdict": verdict, "reason": reason}


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """The claims table as GitHub Markdown, with the verdict rule stated above it."""
    header = ("# Claims\n\n"
              "Effect = treated minus reference variant, paired by seed (log10 ratio where the"
              " measure is a ratio); 95% Student-t CI over seeds. Supported: CI entirely on the"
              " claim's side of the threshold. Not supported: CI entirely on the other side or"
              " touching it. Inconclusive: CI straddles the threshold, < 2 seeds, study disabled or"
              " missing, runs too short, or the baseline never leaves chance (see `reason`).\n\n")
    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return header + "\n".join(lines) + "\n"


def claims(tables_root: Path, studies_cfg: dict, out_csv: Path, out_md: Path,
           rules: ClaimRules | None = None) -> pd.DataFrame:
    """Evaluate every claim from ``tables_root/{study}/*.csv``; write the CSV and Markdown tables."""
    rules = rules or ClaimRules()
    table = pd.DataFrame([evaluate(claim, tables_root, studies_cfg, rules) for claim in CLAIMS],
                         columns=COLUMNS)
    write_csv(table, Path(out_csv))
    write_text(to_markdown(table), Path(out_md))
    return table
