"""Study tables -> the verdict rows of the claims table (``claims.csv`` + ``claims.md``).

A study lists the claims it tests (`claims:` in its config; the kinds and what each needs are in
`bnstudy.catalog.CLAIM_KINDS`). Claims of Ioffe & Szegedy 2015: BN allows higher learning rates,
makes training less sensitive to initialisation, regularises (less need for dropout; a smaller
train-test gap), makes sigmoid networks usable, trains faster (their MNIST Fig. 1). Findings of
Santurkar et al. 2018: BN does not reduce internal covariate shift, BN smooths the loss landscape,
noisy BN trains about as well as BN, the same noise stops a network without BN from training.
Reads tables only; never imports torch.

Rows
    A claim is one or more rows, each one measure over one part of training: "end of training"
    (final accuracies), "steps >= N" (the checkpoint analyses over training, initialisation left
    out: `claim_rules.from_step`) or "step 0" (the same measure at initialisation, reported apart,
    because there the networks differ by their initial gradient scale rather than by training).
    ICS rows are scale-free forms of Definition 2.1 (||G - G'|| / ||G|| and 1 - cos(G, G')); the
    landscape has one row per quantity of Fig. 4 (loss range, gradient change, effective beta).

Effect
    A per-run measure of the treated variant and of the reference, paired on everything but the
    variant (seed, lr, grid values), differenced (treated minus reference; ratios in log10 first),
    averaged within each seed. Seeds are the unit: `effect` is the mean of the per-seed
    differences. Where a claim compares "each variant at its own best learning rate", the lr is
    chosen per variant (and grid point) by the mean over seeds, then runs are paired by seed. A
    claim about one variant alone (the noise claims) takes that variant's per-seed values.

Verdict rule (each row holds "above" or "below" a threshold T)
    * continuous measures: the 95% Student-t interval over seeds (scipy). Supported if it lies
      entirely on the claim's side of T; not supported if it lies entirely on the other side or
      touches T (no effect is not support); inconclusive if it straddles T.
    * measures on a grid (the largest usable lr, steps to reach an accuracy), and any measure
      whose seeds agree exactly (a zero-width interval is no evidence): an exact one-sided
      sign-flip test over seeds at level `alpha`. Supported if p <= alpha towards the claim; not
      supported if p <= alpha the other way, or if every seed shows no effect with enough seeds
      that the test could have spoken (1/2^n <= alpha); else inconclusive. The config check
      refuses a study whose seeds could never reach alpha (`catalog.seeds_needed`).
    * always inconclusive: fewer than 2 paired seeds, the study or its tables missing, runs too
      short (`min_steps`), the network that must train never leaving chance (or, for the DLN,
      never lowering its loss by `min_loss_drop`), or a claim-specific check failing.
    The `reason` column says which. For "BN reduces ICS" the 2018 paper's finding is that it does
    NOT: "not supported" there agrees with the 2018 paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import derived
from .catalog import CLAIM_KINDS, ClaimRules, claim_tables
from .stats import mean_ci, paired_differences, sign_flip_p, smallest_p
from .tables import StudyTables, TableError, write_csv, write_text

COLUMNS = ["key", "claim", "source", "study", "measure", "window", "unit", "effect", "ci_low", "ci_high",
           "p_value", "test", "n_seeds", "paper", "verdict", "agreement", "rule", "reason"]
FINAL, TRAINING, INITIALISATION = "final", "training", "initialisation"  # the parts of training a row speaks of
# a claim that is itself about initialisation (its verdict, not a step-0 row reported apart)
AT_INIT = "at_init"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


# ---------------------------------------------------------------------------------------------
# data


class StudyData:
    """One study's tables (read on first use) and config."""

    def __init__(self, tables: StudyTables):
        self.tables = tables
        self.study_cfg = tables.study_cfg
        self.grid = tables.grid

    def table(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    @property
    def runs(self) -> pd.DataFrame:
        return self.tables["runs"]

    def condition_keys(self, exclude: Sequence[str] = ()) -> list[str]:
        """What pairs a treated run with its reference: seed, lr and grid values."""
        return [k for k in ["seed", "lr", *self.grid] if k not in exclude and k in self.runs.columns]

    def is_regression(self) -> bool:
        task = self.runs.get("task")
        if task is not None and task.notna().any():
            return bool((task == "regression").all())
        return not self.runs["final_train_accuracy"].notna().any()


def indexed(runs: pd.DataFrame, values, keys: Sequence[str]) -> pd.Series:
    """``values`` (one per row of ``runs``) indexed by the rows' condition columns ``keys``."""
    return pd.Series(np.asarray(values, dtype=float), index=pd.MultiIndex.from_frame(runs[list(keys)]))


def by_condition(values_by_run: pd.Series, data: StudyData) -> pd.Series:
    """Per-run values (indexed by run id, e.g. from an analysis table) indexed by condition."""
    runs = data.runs.set_index("run").loc[values_by_run.index].reset_index()
    return indexed(runs, values_by_run.to_numpy(), data.condition_keys())


def accuracy_or_chance(runs: pd.DataFrame, column: str, rules: ClaimRules) -> pd.Series:
    """Final accuracy per run; a diverged run counts as chance (it learnt nothing usable)."""
    return runs[column].where(runs["status"] != "diverged", rules.chance_accuracy)


def at_best_lr(data: StudyData, variant: str, values: pd.Series) -> pd.DataFrame:
    """The runs of ``variant`` at its own best learning rate for each grid point.

    ``values`` (aligned with data.runs) is what "best" maximises: its mean over seeds picks one lr
    per grid point and variant, the same for every seed (so the choice does not chase one seed's
    luck). Returns those runs with a ``value`` column.
    """
    runs = data.runs.assign(value=values)
    mine = runs[runs["variant"] == variant]
    if mine.empty:
        return mine
    grid = [k for k in data.grid if k in mine.columns]
    means = mine.groupby(grid + ["lr"], dropna=False)["value"].mean().reset_index().dropna(subset=["value"])
    if means.empty:
        return mine.iloc[:0]
    best = means.loc[means.groupby(grid, dropna=False)["value"].idxmax()] if grid else \
        means.loc[[means["value"].idxmax()]]
    return mine.merge(best[grid + ["lr"]], on=grid + ["lr"])


# ---------------------------------------------------------------------------------------------
# per-variant measures: (data, variant, rules) -> Series indexed by condition (levels include seed)


def final_accuracy(column: str) -> Callable[[StudyData, str, ClaimRules], pd.Series]:
    """Final accuracy (``column`` of runs.csv) of each run of ``variant`` (diverged = chance)."""

    def measure(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        runs = data.runs[data.runs["variant"] == variant]
        return indexed(runs, accuracy_or_chance(runs, column, rules), data.condition_keys())

    return measure


def best_lr_test_accuracy(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Final test accuracy at the variant's own best lr (diverged = chance), per seed and grid point."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    return indexed(chosen, chosen["value"], data.condition_keys(exclude=["lr"]))


def usable_bar(data: StudyData, rules: ClaimRules) -> float:
    """The test accuracy a run must reach for its lr to count as usable: chance +
    usable_fraction * (best - chance), best = the highest mean over seeds of any (variant, lr,
    grid point) in the study (diverged = chance). A mean, so one lucky run cannot move the bar;
    the same bar for both variants."""
    runs = data.runs.assign(value=accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    best = runs.groupby(["variant", "lr", *data.grid], dropna=False)["value"].mean().max()
    return rules.chance_accuracy + rules.usable_fraction * (best - rules.chance_accuracy)


def largest_usable_log_lr(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """log10 of the largest lr at which ``variant`` completes with a usable test accuracy
    (`usable_bar`), per seed and grid point. A condition with no usable lr scores one grid step
    below the smallest lr. A measure on the lr grid: exact test.
    """
    runs = data.runs
    bar = usable_bar(data, rules)
    mine = runs[runs["variant"] == variant]
    usable = mine[(mine["status"] == "completed") & (mine["final_test_accuracy"] >= bar)]
    keys = data.condition_keys(exclude=["lr"])
    log_lrs = np.log10(np.sort(runs["lr"].unique()))
    floor = log_lrs[0] - (np.median(np.diff(log_lrs)) if len(log_lrs) > 1 else 1.0)
    conditions = pd.MultiIndex.from_frame(mine[keys].drop_duplicates())
    largest = np.log10(usable["lr"]).groupby([usable[k] for k in keys]).max()
    if not isinstance(largest.index, pd.MultiIndex):
        largest.index = pd.MultiIndex.from_arrays([largest.index], names=keys)
    return largest.reindex(conditions).fillna(floor)


def accuracy_spread_over_init(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Max minus min over the init scales of the final test accuracy at the variant's own best
    lr for each init scale (diverged = chance), per seed."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    keys = data.condition_keys(exclude=["lr", "init_scale"])
    grouped = chosen.groupby(keys)["value"]
    spread = grouped.max() - grouped.min()
    if not isinstance(spread.index, pd.MultiIndex):
        spread.index = pd.MultiIndex.from_arrays([spread.index], names=keys)
    return spread


def dropout_gain(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """What dropout adds: the best final test accuracy over the dropout rates > 0 minus the one
    without dropout, each at the variant's own best lr for that rate, per seed (and other grid
    values). A network that regularises itself gains less."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    keys = data.condition_keys(exclude=["lr", "dropout"])
    without = chosen[chosen["dropout"] == 0].set_index(keys)["value"]
    with_ = chosen[chosen["dropout"] > 0].groupby(keys)["value"].max()
    gain = (with_ - without).dropna()
    if not isinstance(gain.index, pd.MultiIndex):
        gain.index = pd.MultiIndex.from_arrays([gain.index], names=keys)
    return gain


def generalisation_gap(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Final train minus test accuracy (both eval mode) of completed runs at the variant's best
    lr, without dropout when the study varies it."""
    runs = data.runs
    completed = runs["status"] == "completed"
    if "dropout" in runs.columns:
        completed &= runs["dropout"] == runs["dropout"].min()
    test = runs["final_test_accuracy"].where(completed)
    chosen = at_best_lr(data, variant, test)
    chosen = chosen[chosen["value"].notna()]
    gap = chosen["final_train_accuracy"] - chosen["final_test_accuracy"]
    keys = data.condition_keys(exclude=["lr", "dropout"])
    return indexed(chosen, gap, keys)


def log_steps_to_reach_standard(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """log10 of the first evaluated step at which ``variant``'s test accuracy reaches the final
    test accuracy (last evaluation) of the standard network of the same seed, lr and grid values.
    A run that never reaches it counts as one evaluation past its end. A measure on the
    evaluation grid."""
    keys = data.condition_keys()
    runs = data.runs
    evals = data.table("eval")
    tests = evals[evals["split"] == "test"].sort_values("step")
    finals = tests.groupby("run")["accuracy"].last()
    standard = runs[runs["variant"] == "standard"]
    target = pd.Series(finals.reindex(standard["run"]).to_numpy(),
                       index=pd.MultiIndex.from_frame(standard[keys]))
    out = {}
    for run_row in runs[runs["variant"] == variant].itertuples(index=False):
        key = tuple(getattr(run_row, k) for k in keys)
        curve = tests[tests["run"] == run_row.run]
        goal = target.get(key, np.nan)
        if not np.isfinite(goal) or curve.empty:
            continue
        reached = curve[curve["accuracy"] >= goal]
        spacing = curve["step"].diff().median() if len(curve) > 1 else curve["step"].max()
        step = reached["step"].iloc[0] if len(reached) else curve["step"].max() + spacing
        out[key] = np.log10(max(step, 1))
    index = pd.MultiIndex.from_tuples(list(out), names=keys) if out else \
        pd.MultiIndex.from_arrays([[]] * len(keys), names=keys)
    return pd.Series(list(out.values()), index=index, dtype=float)


def in_window(frame: pd.DataFrame, window: str, rules: ClaimRules) -> pd.DataFrame:
    """The rows of an analysis table in the part of training `window` speaks of."""
    if window == INITIALISATION:
        return frame[frame["step"] == 0]
    return frame[frame["step"] >= rules.from_step]


def window_label(window: str, rules: ClaimRules) -> str:
    return {FINAL: "end of training", INITIALISATION: "step 0", AT_INIT: "at initialisation"}.get(
        window, f"steps >= {rules.from_step}")


def mean_per_run(frame: pd.DataFrame, values: pd.Series, log: bool) -> pd.Series:
    """Mean over rows of `values` (log10 first when `log`, then over positive values only) per run."""
    keep = values.notna() & np.isfinite(values) & ((values > 0) if log else True)
    kept = np.log10(values[keep]) if log else values[keep]
    return kept.groupby(frame.loc[keep, "run"]).mean()


def ics_rows(data: StudyData, variant: str, rules: ClaimRules, window: str) -> pd.DataFrame:
    """The variant's ICS rows in the window, on the configured layers (layer 1 has no earlier
    layer: its G' is G, so it is left out when no layers are configured)."""
    ics = in_window(data.table("ics"), window, rules)
    ics = ics[ics["variant"] == variant]
    layers = [int(x) for x in data.study_cfg.get("layers") or []]
    return ics[ics["layer"].isin(layers)] if layers else ics[ics["layer"] > 1]


def ics_relative(window: str):
    """Mean over steps and layers of log10 ||G - G'|| / ||G||: Definition 2.1 without the scale of
    the layer's gradient (a BN network's is 60-130x larger at initialisation)."""
    def metric(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        ics = ics_rows(data, variant, rules, window)
        return by_condition(mean_per_run(ics, ics["l2_diff"] / ics["grad_norm"], log=True), data)
    return metric


def ics_angle(window: str):
    """Mean over steps and layers of 1 - cos(G, G') (0: the update of the earlier layers leaves
    the gradient's direction unchanged)."""
    def metric(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        ics = ics_rows(data, variant, rules, window)
        return by_condition(mean_per_run(ics, 1 - ics["cosine"], log=False), data)
    return metric


def landscape_per_step(data: StudyData, variant: str, rules: ClaimRules, window: str) -> pd.DataFrame:
    """Per run and step along the gradient (section 3.2): the loss range over eta, the largest
    gradient change ||g - grad L(W - eta g)|| over eta, and the effective beta (the max over eta)."""
    landscape = in_window(data.table("landscape"), window, rules)
    landscape = landscape[(landscape["variant"] == variant) & (landscape["direction"] == "gradient")]
    grouped = landscape.groupby(["run", "step"])
    return pd.DataFrame({"loss_range": grouped["loss"].max() - grouped["loss"].min(),
                         "grad_change": grouped["grad_diff"].max(),
                         "beta": grouped["beta"].max()}).reset_index()


def landscape_log(column: str, window: str):
    """Mean over the window's steps of log10 of a landscape quantity (`landscape_per_step`)."""
    def metric(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        per_step = landscape_per_step(data, variant, rules, window)
        return by_condition(mean_per_run(per_step, per_step[column], log=True), data)
    return metric


def outlier_log_ratio(window: str):
    """Mean over the window's steps of log10 (largest eigenvalue / bulk edge of the density)."""
    def metric(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        spectrum = in_window(data.table("spectrum"), window, rules)
        density = in_window(data.table("density"), window, rules)
        frame = derived.outlier_ratio(spectrum[spectrum["variant"] == variant],
                                      density[density["variant"] == variant], rules.bulk_mass)
        return by_condition(mean_per_run(frame, frame["outlier_ratio"], log=True), data)
    return metric


def top_gradient_share(window: str):
    """Mean over the window's steps of the share of ||g||^2 in the top-k Hessian eigenvectors."""
    def metric(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
        spectrum = in_window(data.table("spectrum"), window, rules)
        frame = derived.spectrum_summary(spectrum[spectrum["variant"] == variant])
        return by_condition(mean_per_run(frame, frame["gradient_share"], log=False), data)
    return metric


def eos_median_ratio(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: the median of lr x sharpness over the checkpoints from the first one at which it
    reached 2 (runs that never reach it have none)."""
    spectrum = data.table("spectrum")
    ratios = derived.eos_ratios(spectrum[spectrum["variant"] == variant])
    after = ratios[ratios["after_crossing"]]
    return by_condition(after.groupby("run")["ratio"].median(), data)


def log_basin_radius(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """log10 of the basin radius (derived.basin_radii) at each run's last analysed step."""
    surface = data.table("surface")
    radii = derived.basin_radii(surface[surface["variant"] == variant])
    last = radii[radii["step"] == radii.groupby("run")["step"].transform("max")]
    return by_condition(mean_per_run(last, last["radius"], log=True), data)


def over_group_sizes(data: StudyData, variant: str, min_sizes: int, fn) -> pd.Series:
    """Per seed (and lr): `fn(group_size, grad_norm)` over the group sizes of the first normalised
    layer's gradient norm at initialisation, for conditions with at least `min_sizes` sizes."""
    table = data.table("activations")
    first = table[(table["variant"] == variant) & (table["layer"] == 1) & (table["step"] == 0)]
    keys = [k for k in data.condition_keys(exclude=["group_size"]) if k in first.columns]
    out = {}
    for key, group in first.groupby(keys):
        if group["group_size"].nunique() >= min_sizes:
            value = fn(group["group_size"].astype(float), group["grad_norm"].astype(float))
            out[key if isinstance(key, tuple) else (key,)] = float(value)
    index = pd.MultiIndex.from_tuples(list(out), names=keys) if out else pd.MultiIndex.from_arrays([[]] * len(keys), names=keys)
    return pd.Series(list(out.values()), index=index, dtype=float)


def group_size_slope(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and lr): the least-squares slope of log10 of the first normalised layer's gradient
    norm at initialisation against log2 of the group size, i.e. the log10 change per doubling of
    the group. A slope, not a rank correlation: a rank correlation over a few group sizes takes a
    handful of values, every seed often gives exactly -1, and a zero-width interval decides nothing."""
    return over_group_sizes(data, variant, 2, lambda size, grad: np.polyfit(
        np.log2(size), np.log10(grad.clip(lower=1e-30)), 1)[0])


def group_size_rank_correlation(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and lr): Spearman's rank correlation over the group sizes between the first
    normalised layer's gradient norm at initialisation and the group size (the sign Lubana et al.
    report). It takes few values (often exactly -1 or +1 for every seed), so its row gets the exact
    sign-flip test, which needs 5 seeds; the slope row above decides with fewer."""
    from scipy.stats import spearmanr

    return over_group_sizes(data, variant, 3, lambda size, grad: spearmanr(size, grad).statistic)


def log_largest_cosine(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: log10 of the largest |cos(w, g)| over its recorded steps, layers and filters."""
    layers = data.table("layers")
    layers = layers[(layers["variant"] == variant)].dropna(subset=["weight_grad_cos"])
    largest = layers.groupby("run")["weight_grad_cos"].max()
    return by_condition(np.log10(largest.clip(lower=1e-30)), data)


def log_norm_prediction_error(data: StudyData, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: log10 of the largest relative gap between ||w_t||^2 and its scale-invariance
    prediction ||w_0||^2 + lr^2 sum_{s<t} ||g_s||^2 (needs every step recorded: log.layers_every 1)."""
    from .figure_data import weight_norms

    layers = data.table("layers")
    layers = layers[layers["variant"] == variant].dropna(subset=["weight_norm"])
    if layers.empty or layers.groupby(["run", "layer"])["step"].diff().dropna().gt(1).any():
        raise TableError("the scale-invariance prediction needs every step recorded: set log.layers_every: 1")
    weights = weight_norms(layers)
    gap = ((weights["w_sq"] - weights["w_sq_predicted"]).abs() / weights["w_sq"]).groupby(weights["run"]).max()
    return by_condition(np.log10(gap.clip(lower=1e-30)), data)


# ---------------------------------------------------------------------------------------------
# checks: (data, claim, rules) -> reason the claim cannot be tested, or None


def runs_long_enough(data: StudyData, claim: "Claim", rules: ClaimRules) -> str | None:
    longest = data.runs["steps_done"].max()
    if not longest >= rules.min_steps:
        return f"runs too short: the longest did {longest} steps < min_steps {rules.min_steps}"
    return None


def network_trains(data: StudyData, claim: "Claim", rules: ClaimRules) -> str | None:
    """The ``must_train`` variant must leave chance in at least one run, else nothing was learnt
    (None: a measure at initialisation, which training does not enter)."""
    if claim.must_train is None:
        return None
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
class Row:
    """One row of a claim: a measure over one part of training, and which side of a threshold
    supports the claim. Its key in the table is <claim kind>.<name>.<window>."""

    name: str
    measure: str
    metric: Callable[[StudyData, str, ClaimRules], pd.Series]
    holds: str  # "above" or "below" the threshold
    window: str = FINAL
    discrete: bool = False  # a measure on a grid: exact sign-flip test instead of a t interval
    threshold: Callable[[ClaimRules], float] = lambda rules: 0.0  # (low, high) when holds is "within"
    unit: str = "log10 ratio"  # what the effect is in: "log10 ratio", "accuracy", "share", "difference", "value"
    variant: str | None = None  # an unpaired claim's row about another variant than the treated one


@dataclass(frozen=True)
class Claim:
    kind: str  # its name in bnstudy.catalog.CLAIM_KINDS (which also names the two variants)
    claim: str
    source: str
    paper: str
    rows: tuple[Row, ...]
    # what the papers found, as the verdict each predicts: (source, verdict), e.g. 2015 claims BN
    # reduces ICS ("supported"), 2018 finds it does not ("not supported")
    findings: tuple[tuple[str, str], ...] = ()
    must_train: str | None = "standard"
    paired: bool = True  # False: the treated variant's own values (the reference only must train)
    checks: tuple[Callable[[StudyData, "Claim", ClaimRules], str | None], ...] = ()
    treated_variant: str | None = None  # set per variant for a per-variant claim

    @property
    def treated(self) -> str:
        return self.treated_variant or CLAIM_KINDS[self.kind].variants[0]

    @property
    def reference(self) -> str:
        return CLAIM_KINDS[self.kind].variants[1]

    def agreement(self, row: Row, verdict: str) -> str:
        """Which papers' findings a verdict agrees with (the checkpoint analyses at initialisation
        are reported, not compared: the papers speak of training)."""
        if row.window == INITIALISATION or not self.findings or (row.variant and row.variant != self.treated):
            return ""
        if verdict == INCONCLUSIVE:
            return "undecided"
        return "; ".join(f"{'agrees with' if verdict == expected else 'disagrees with'} {source}"
                         for source, expected in self.findings)

    def rule(self, row: Row, rules: ClaimRules) -> str:
        threshold = row.threshold(rules)
        other = "below" if row.holds == "above" else "above"
        if row.holds == "within":
            threshold = tuple(threshold)
        test = (f"exact one-sided sign-flip test over seeds at alpha {rules.alpha:g}" if row.discrete else
                "95% t interval over seeds (exact sign-flip test when the seeds agree exactly)")
        effect = (f"{self.treated} minus {self.reference}, paired by seed" if self.paired
                  else f"{row.variant or self.treated}'s value per seed")
        if row.holds == "within":
            low, high = threshold
            return (f"effect = {effect}; 95% t interval over seeds; supported if it lies within [{low:g},"
                    f" {high:g}], not supported if entirely outside; inconclusive if it crosses an edge or"
                    f" with < 2 seeds")
        return (f"effect = {effect}; {test}; supported if the effect lies {row.holds} {threshold:g}, not"
                f" supported if at or {other}; inconclusive if undecided, with < 2 seeds, runs <"
                f" {rules.min_steps} steps" + (f", or {self.must_train} never training" if self.must_train else ""))


_PAIRING = "batchnorm minus standard, paired by seed, lr and grid values, averaged per seed"
_BEST_LR = "batchnorm minus standard, each at its own best lr (chosen by the mean over seeds), paired by seed"
_LAYERS = "over the study's layers"


def _windows(*measures: tuple) -> tuple[Row, ...]:
    """Each (name, metric factory, measure, holds[, unit]) over training (the verdicts), then each
    at initialisation (reported apart)."""
    return tuple(Row(name, measure, make(window), holds, window, unit=unit[0] if unit else "log10 ratio")
                 for window in (TRAINING, INITIALISATION) for name, make, measure, holds, *unit in measures)


_CLAIMS = [
    Claim(
        "higher_learning_rates", "BN allows higher learning rates", "2015",
        "2015: BN enables much higher learning rates; BN-x5 (5x the lr) reaches the Inception"
        " baseline's 72.2% in 14x fewer steps and BN-x30 (30x) also trains",
        (Row("usable_lr", "log10 of the largest lr whose run completes with final test accuracy (whole test set)"
             " >= chance + usable_fraction x (best mean over seeds - chance); batchnorm minus"
             " standard per seed (log10 ratio)", largest_usable_log_lr, "above", discrete=True),),
        findings=(("2015", SUPPORTED),), checks=(reference_fails_within_grid,)),
    Claim(
        "initialisation", "BN makes training less sensitive to initialisation", "2015",
        "2015: with BN one can be less careful about initialisation (no number given)",
        (Row("spread", "spread (max - min) over init scales of final test accuracy, each variant at its own"
             " best lr per init scale (diverged = chance); batchnorm minus standard per seed",
             accuracy_spread_over_init, "below", unit="accuracy"),), findings=(("2015", SUPPORTED),)),
    Claim(
        "regularisation", "BN regularises (less need for dropout)", "2015",
        "2015: BN regularises; BN-Inception drops dropout without more overfitting",
        (Row("dropout_gain", "test accuracy gained by dropout (best rate > 0 minus none, each at its own best lr);"
             " batchnorm minus standard per seed", dropout_gain, "below", unit="accuracy"),),
        findings=(("2015", SUPPORTED),)),
    Claim(
        "generalisation_gap", "BN reduces the train-test gap", "2015",
        "2015: BN regularises; 2018: test accuracy 83% with BN vs 80% without (CIFAR-10, VGG)",
        (Row("gap", "final train minus test accuracy (eval mode) without dropout; " + _BEST_LR,
             generalisation_gap, "below", unit="accuracy"),), findings=(("2015", SUPPORTED),)),
    Claim(
        "sigmoid", "BN makes sigmoid networks usable", "2015",
        "2015: a sigmoid Inception with BN reaches 69.8% top-1; without BN it never trains",
        (Row("accuracy", "final test accuracy of sigmoid networks (diverged = chance); " + _BEST_LR,
             best_lr_test_accuracy, "above", unit="accuracy"),), findings=(("2015", SUPPORTED),),
        must_train="batchnorm"),
    Claim(
        "faster_training", "BN trains faster", "2015",
        "2015 (Fig. 1, MNIST): the BN network trains faster and reaches higher test accuracy;"
        " BN-x5 reaches the Inception baseline in 14x fewer steps",
        (Row("steps", "log10 of the steps to reach the standard network's final test accuracy (same seed);"
             " batchnorm minus standard per seed (negative = BN faster)", log_steps_to_reach_standard,
             "below", discrete=True),), findings=(("2015", SUPPORTED),)),
    Claim(
        "reduces_ics", "BN reduces internal covariate shift", "2015",
        "2018 (Fig. 3): BN does NOT reduce ICS; BN networks often show larger ||G - G'|| and, in"
        " the DLN, a cosine near 0",
        _windows(("relative", ics_relative, "log10 ||G - G'|| / ||G|| (Definition 2.1 without the gradient's"
                  f" scale), mean over steps and {_LAYERS}; " + _PAIRING + " (log10 ratio)", "below"),
                 ("angle", ics_angle, "1 - cos(G, G') (Definition 2.1), mean over steps and " + _LAYERS + "; "
                  + _PAIRING, "below", "difference")), findings=(("2015", SUPPORTED), ("2018", NOT_SUPPORTED))),
    Claim(
        "smoother_landscape", "BN smooths the loss landscape", "2018",
        "2018 (Figs. 4, 10): without BN the loss varies widely early, gradient predictiveness is"
        " ~2 orders of magnitude worse early on, beta-smoothness is consistently worse",
        _windows(("loss_range", lambda w: landscape_log("loss_range", w), "Fig. 4a: log10 of the loss range"
                  " (max - min over eta of L(W - eta g)), mean over steps; " + _PAIRING + " (log10 ratio)", "below"),
                 ("grad_change", lambda w: landscape_log("grad_change", w), "Fig. 4b: log10 of the largest"
                  " gradient change ||g - grad L(W - eta g)|| over eta, mean over steps; " + _PAIRING
                  + " (log10 ratio)", "below"),
                 ("beta", lambda w: landscape_log("beta", w), "Fig. 4c: log10 effective beta-smoothness (max over"
                  " eta of ||g - grad L(W - eta g)|| / ||eta g||), mean over steps; " + _PAIRING
                  + " (log10 ratio)", "below")), findings=(("2018", SUPPORTED),)),
    Claim(
        "noisy_bn_trains", "Noisy BN trains about as well as BN", "2018",
        "2018 (Fig. 2): noisy BN trains almost as well as BN and better than standard, despite"
        " unstable distributions",
        (Row("accuracy", "final training-mode train accuracy (batch statistics and noise on, mean over the last"
             " evaluation window; diverged = chance); noisy_batchnorm minus batchnorm, paired by seed;"
             " holds if not worse than -noninferiority_margin",
             final_accuracy("final_train_batches_accuracy"), "above", unit="accuracy",
             threshold=lambda rules: -rules.noninferiority_margin),), findings=(("2018", SUPPORTED),),
        must_train="batchnorm"),
    Claim(
        "noise_stops_training", "The same noise stops a network without BN from training", "2018",
        "2018 (section 2.1): injecting the same noise into the standard network \"prevented the"
        " network from training entirely\" (one sentence, no figure)",
        (Row("accuracy", "final training-mode train accuracy of standard_noise (Algorithm 1's draws on the raw"
             " pre-activations; diverged = chance); holds if below chance + chance_margin",
             final_accuracy("final_train_batches_accuracy"), "below", unit="accuracy",
             threshold=lambda rules: rules.chance_accuracy + rules.chance_margin),),
        findings=(("2018", SUPPORTED),), paired=False),
    Claim(
        "unit_noise_stops_training", "The same noise, scaled to each unit, stops a network without BN"
        " from training", "2018",
        "2018 (section 2.1): injecting the same noise into the standard network \"prevented the"
        " network from training entirely\" (one sentence, no figure)",
        (Row("accuracy", "final training-mode train accuracy of standard_unit_noise (Algorithm 1's draws in each"
             " unit's standardised coordinates; diverged = chance); holds if below chance +"
             " chance_margin", final_accuracy("final_train_batches_accuracy"), "below", unit="accuracy",
             threshold=lambda rules: rules.chance_accuracy + rules.chance_margin),),
        findings=(("2018", SUPPORTED),), paired=False),
]
_CLAIMS += [
    Claim(
        "hessian_outliers", "Without BN, isolated Hessian outliers hold the gradient", "Ghorbani 2019",
        "Ghorbani et al. 2019: without BN large isolated eigenvalues appear early in training and the"
        " gradient concentrates in their eigenspace; with BN both are almost absent",
        _windows(("outlier_ratio", outlier_log_ratio, "log10 (largest eigenvalue / edge of the bulk: the"
                  " 1 - bulk_mass quantile of the SLQ density), mean over steps; " + _PAIRING + " (log10 ratio)",
                  "below"),
                 ("gradient_share", top_gradient_share, "share of ||g||^2 in the top-k Hessian eigenvectors,"
                  " mean over steps; " + _PAIRING, "below", "share")),
        findings=(("Ghorbani 2019", SUPPORTED),)),
    Claim(
        "edge_of_stability", "Full-batch gradient descent runs at the edge of stability", "Cohen 2021",
        "Cohen et al. 2021: under full-batch GD the top Hessian eigenvalue rises until it reaches 2/lr,"
        " then hovers just above it while the loss keeps falling non-monotonically",
        (Row("standard_ratio", "median of lr x largest Hessian eigenvalue over the checkpoints from its first"
             " crossing of 2, standard network, mean over learning rates", eos_median_ratio, "within",
             threshold=lambda rules: (rules.eos_low, rules.eos_high), unit="value", variant="standard"),
         Row("batchnorm_ratio", "the same, BN network (reported beside it: the source states no finding"
             " for BN)", eos_median_ratio, "within", threshold=lambda rules: (rules.eos_low, rules.eos_high),
             unit="value", variant="batchnorm")),
        findings=(("Cohen 2021", SUPPORTED),), paired=False),
    Claim(
        "wider_basin", "BN widens the basin around the trained weights", "Li 2018 (method)",
        "Li et al. 2018 measure surfaces with filter-normalised directions and find skip connections,"
        " not BN, decide how chaotic they are: no stated finding for BN",
        (Row("radius", "log10 of the basin radius (distance along the filter-normalised directions at"
             " which the loss reaches twice its centre value) at the last analysed step; " + _PAIRING
             + " (log10 ratio)", log_basin_radius, "above"),)),
]
_CLAIMS += [
    Claim(
        "bn_trains_better", "BN reaches a higher test accuracy", "2018",
        "2018 (Fig. 1, VGG on CIFAR-10): 83% test accuracy with BN, 80% without; asked again with skip"
        " connections (He et al.'s ResNet)",
        (Row("accuracy", "final test accuracy (eval mode, whole test set; diverged = chance); " + _BEST_LR,
             best_lr_test_accuracy, "above", unit="accuracy"),), findings=(("2018", SUPPORTED),)),
    Claim(
        "smoother_than_none", "This normaliser smooths the loss landscape", "2018 / Lubana 2021",
        "2018 (section 3.3): lp normalisations smooth the landscape like BN; Lubana et al. 2021 compare"
        " LayerNorm, GroupNorm, InstanceNorm and WeightNorm by their activations and gradients",
        _windows(("loss_range", lambda w: landscape_log("loss_range", w), "Fig. 4a: log10 loss range over eta,"
                  " mean over steps; the variant minus standard, paired by seed (log10 ratio)", "below"),
                 ("grad_change", lambda w: landscape_log("grad_change", w), "Fig. 4b: log10 largest gradient"
                  " change over eta, mean over steps; the variant minus standard, paired by seed (log10 ratio)",
                  "below"),
                 ("beta", lambda w: landscape_log("beta", w), "Fig. 4c: log10 effective beta-smoothness, mean over"
                  " steps; the variant minus standard, paired by seed (log10 ratio)", "below"))[:3],
        findings=(("2018", SUPPORTED),)),
    Claim(
        "group_size_gradients", "Smaller groups give larger first-layer gradients", "Lubana 2021",
        "Lubana et al. 2021: small groups inflate early layers' gradient norms (GroupNorm)",
        (Row("slope", "log10 change of the first layer's gradient norm at initialisation per doubling of"
             " the group size (least-squares slope over the study's group sizes); groupnorm's value per seed"
             " (negative = smaller groups, larger gradients)", group_size_slope, "below", window=AT_INIT,
             unit="value"),
         Row("rank_correlation", "Spearman's rank correlation over group sizes between the first layer's gradient"
             " norm at initialisation and the group size, groupnorm's value per seed (Lubana et al.'s sign: negative);"
             " exact sign-flip test", group_size_rank_correlation, "below", window=AT_INIT, discrete=True,
             unit="value")),
        # a measure at initialisation: whether the short runs leave chance is beside the point (on
        # CIFAR-10, 20 steps of GroupNorm at lr 0.1 stay below 15%)
        findings=(("Lubana 2021", SUPPORTED),), paired=False, must_train=None),
    Claim(
        "scale_invariance", "BN makes its layers' weights scale-invariant", "Arora 2019",
        "Arora, Li & Lyu 2019: with BN, w . grad L = 0, so under plain SGD ||w_t+1||^2 = ||w_t||^2 +"
        " lr^2 ||g_t||^2 and the effective learning rate lr / ||w||^2 falls by itself",
        (Row("cosine", "log10 of the largest |cos(w, g)| over steps, layers and filters; batchnorm's value per"
             " seed; holds below -3 (|cos| < 1e-3)", log_largest_cosine, "below", threshold=lambda rules: -3.0,
             unit="value", variant="batchnorm"),
         Row("norm_identity", "log10 of the largest relative gap between ||w_t||^2 and ||w_0||^2 + lr^2"
             " sum ||g_s||^2; batchnorm's value per seed; holds below -3", log_norm_prediction_error, "below",
             threshold=lambda rules: -3.0, unit="value", variant="batchnorm"),
         Row("standard_cosine", "the same largest |cos(w, g)| of the standard network (reported beside it: no"
             " scale invariance without a normaliser)", log_largest_cosine, "below",
             threshold=lambda rules: -3.0, unit="value", variant="standard")),
        findings=(("Arora 2019", SUPPORTED),), paired=False, must_train="batchnorm"),
]
CLAIMS: dict[str, Claim] = {claim.kind: claim for claim in _CLAIMS}


# ---------------------------------------------------------------------------------------------
# verdicts


def decide(effects, threshold: float, holds: str, discrete: bool, rules: ClaimRules,
           blockers: Sequence[str] = ()) -> dict:
    """The verdict rule of the module docstring: effect, CI, p-value, test, verdict and reason.
    `holds` "within" takes `threshold` as a band (low, high): supported if the interval lies in
    it, not supported if it lies entirely outside."""
    if holds == "within":
        return decide_band(effects, threshold, blockers)
    if holds not in ("above", "below"):
        raise ValueError(f"holds must be 'above', 'below' or 'within', got {holds!r}")
    interval = mean_ci(effects)
    out = {"effect": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
           "n_seeds": interval.n, "p_value": np.nan, "test": "none"}
    if blockers:
        return {**out, "verdict": INCONCLUSIVE, "reason": "; ".join(blockers)}
    n = interval.n
    if n < 2:
        return {**out, "verdict": INCONCLUSIVE, "reason": f"{n} paired seed(s) < 2: no test possible"}
    other = "below" if holds == "above" else "above"
    if not discrete and np.isfinite(interval.low):
        text = f"95% CI [{interval.low:.3g}, {interval.high:.3g}]"
        out["test"] = "t interval"
        if (interval.low > threshold) if holds == "above" else (interval.high < threshold):
            return {**out, "verdict": SUPPORTED, "reason": f"{text} entirely {holds} {threshold:g}"}
        if (interval.high <= threshold) if holds == "above" else (interval.low >= threshold):
            return {**out, "verdict": NOT_SUPPORTED, "reason": f"{text} entirely at or {other} {threshold:g}"}
        return {**out, "verdict": INCONCLUSIVE, "reason": f"{text} straddles {threshold:g}"}
    # a grid measure, or seeds that agree exactly: an exact test over the seeds
    toward, away = ("greater", "less") if holds == "above" else ("less", "greater")
    p_claim, p_other = sign_flip_p(effects, threshold, toward), sign_flip_p(effects, threshold, away)
    floor = smallest_p(n)
    why = "a measure on a grid" if discrete else "the seeds agree exactly (a zero-width interval is no evidence)"
    out.update(test="sign-flip", p_value=p_claim)
    if p_claim <= rules.alpha:
        return {**out, "verdict": SUPPORTED,
                "reason": f"{why}: exact sign-flip test over {n} seeds, p = {p_claim:.3g} <= {rules.alpha:g}"}
    values = np.asarray(effects, dtype=float)
    no_effect_side = (values <= threshold) if holds == "above" else (values >= threshold)
    if p_other <= rules.alpha or (no_effect_side.all() and floor <= rules.alpha):
        return {**out, "verdict": NOT_SUPPORTED,
                "reason": f"{why}: every seed at or {other} {threshold:g} (exact sign-flip test over {n}"
                          f" seeds, p towards the claim = {p_claim:.3g})"}
    return {**out, "verdict": INCONCLUSIVE,
            "reason": f"{why}: exact sign-flip test over {n} seeds, p = {p_claim:.3g} > {rules.alpha:g}"
                      f" (the smallest attainable with {n} seeds is {floor:.3g})"}


def decide_band(effects, band: tuple[float, float], blockers: Sequence[str] = ()) -> dict:
    """A 95% t interval over seeds against a band: inside it = supported, wholly outside = not
    supported, across an edge = inconclusive."""
    low, high = band
    interval = mean_ci(effects)
    out = {"effect": interval.mean, "ci_low": interval.low, "ci_high": interval.high, "n_seeds": interval.n,
           "p_value": np.nan, "test": "t interval"}
    if blockers:
        return {**out, "test": "none", "verdict": INCONCLUSIVE, "reason": "; ".join(blockers)}
    if interval.n < 2 or not np.isfinite(interval.low):
        return {**out, "test": "none", "verdict": INCONCLUSIVE,
                "reason": f"{interval.n} seed(s) without a spread: no interval to place in [{low:g}, {high:g}]"}
    text = f"95% CI [{interval.low:.3g}, {interval.high:.3g}]"
    if low <= interval.low and interval.high <= high:
        return {**out, "verdict": SUPPORTED, "reason": f"{text} within [{low:g}, {high:g}]"}
    if interval.high < low or interval.low > high:
        return {**out, "verdict": NOT_SUPPORTED, "reason": f"{text} entirely outside [{low:g}, {high:g}]"}
    return {**out, "verdict": INCONCLUSIVE, "reason": f"{text} crosses an edge of [{low:g}, {high:g}]"}


def seed_effects(data: StudyData, claim: Claim, row: Row, rules: ClaimRules) -> pd.Series:
    """Per-seed mean of the paired treated-minus-reference differences (or, for a claim about one
    variant, of its own values)."""
    treated = row.metric(data, row.variant or claim.treated, rules)
    if claim.paired:
        values = paired_differences(treated, row.metric(data, claim.reference, rules))
    else:
        values = treated[np.isfinite(treated.to_numpy(dtype=float))]
    if values.empty:
        return pd.Series(dtype=float)
    return values.groupby(level="seed").mean()


def evaluate(study: str, kind: str, study_cfg: Mapping, tables: Path | None, rules: ClaimRules) -> list[dict]:
    """The claims-table rows of claim `kind` as tested by `study`, from its tables folder (for a
    per-variant claim, its rows for every variant of the study against the reference)."""
    claim = CLAIMS[kind]
    if CLAIM_KINDS[kind].per_variant:
        reference = CLAIM_KINDS[kind].variants[1]
        rows = []
        for variant in study_cfg.get("variants", []):
            if variant != reference:
                one = dataclasses.replace(claim, treated_variant=variant)
                rows += [{**row, "key": row["key"].replace(f"{kind}.", f"{kind}.{variant}.", 1),
                          "claim": f"{variant}: {claim.claim}"}
                         for row in _evaluate(one, study, kind, study_cfg, tables, rules)]
        return rows
    return _evaluate(claim, study, kind, study_cfg, tables, rules)


def _evaluate(claim: "Claim", study: str, kind: str, study_cfg: Mapping, tables: Path | None,
              rules: ClaimRules) -> list[dict]:
    rules = rules.overridden(study_cfg.get("claim_rules"))
    blockers: list[str] = []
    data = None
    try:
        if tables is None:
            raise TableError(f"no tables folder given for study {study}")
        data = StudyData(StudyTables.in_folder(tables, study_cfg, claim_tables(kind)))
        present = set(data.runs["variant"])
        blockers = [f"no {v} runs in the study" for v in (claim.treated, claim.reference) if v not in present]
        if not blockers:
            blockers = [reason for check in (runs_long_enough, network_trains, *claim.checks)
                        if (reason := check(data, claim, rules))]
    except TableError as error:
        blockers, data = [f"tables missing or malformed: {error}"], None
    out = []
    for row in claim.rows:
        effects = pd.Series(dtype=float)
        reasons = list(blockers)
        if data is not None and not blockers and row.variant and row.variant not in set(data.runs["variant"]):
            reasons = [f"no {row.variant} runs in the study"]
        if data is not None and not reasons:
            try:
                effects = seed_effects(data, claim, row, rules)
            except TableError as error:
                reasons = [f"tables missing or malformed: {error}"]
        verdict = decide(effects, row.threshold(rules), row.holds, row.discrete, rules, reasons)
        out.append({"key": f"{kind}.{row.name}.{row.window}", "claim": claim.claim, "source": claim.source,
                    "study": study, "measure": row.measure, "window": window_label(row.window, rules),
                    "unit": row.unit, "paper": claim.paper, "rule": claim.rule(row, rules),
                    "agreement": claim.agreement(row, verdict["verdict"]), **verdict})
    return out


def usable_fraction_sensitivity(studies_cfg: Mapping, tables: Mapping[str, Path], rules: ClaimRules,
                                fractions=(0.4, 0.5, 0.6)) -> pd.DataFrame:
    """The learning-rate verdicts again at other usable fractions (how much they hang on it)."""
    rows = []
    for study, cfg in studies_cfg.items():
        if not cfg.get("enabled", True) or "higher_learning_rates" not in cfg.get("claims", []):
            continue
        for fraction in fractions:
            overrides = {**(cfg.get("claim_rules") or {}), "usable_fraction": fraction}
            (row,) = evaluate(study, "higher_learning_rates", {**cfg, "claim_rules": overrides},
                              tables.get(study), rules)
            rows.append({"study": study, "usable_fraction": fraction, **{k: row[k] for k in
                         ("effect", "p_value", "n_seeds", "verdict")}})
    return pd.DataFrame(rows, columns=["study", "usable_fraction", "effect", "p_value", "n_seeds", "verdict"])


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _effect_text(row) -> str:
    if not np.isfinite(row["effect"]):
        return ""
    text = f"{row['effect']:+.3g}"
    if np.isfinite(row["ci_low"]):
        return f"{text} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]"
    if np.isfinite(row["p_value"]):
        return f"{text} (exact p = {row['p_value']:.3g})"
    return text


def to_markdown(table: pd.DataFrame, sensitivity: pd.DataFrame | None = None) -> str:
    """The claims table as GitHub Markdown: the short table first, the full detail below it."""
    header = ("# Claims\n\n"
              "Effect = treated minus reference variant, paired by seed (log10 ratio where the measure"
              " is a ratio; a claim about one variant gives its own value), with its 95% t interval over"
              " seeds, or the p-value of an exact sign-flip test over seeds for measures on a grid. The"
              " window is the part of training a row measures: the checkpoint analyses' verdicts are"
              " over training with initialisation left out, their value at initialisation is a row of its"
              " own. The rule and the reason for each verdict are in the detail table below.\n\n")
    short = ["| claim | study | measure | window | effect [95% CI] | seeds | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    short += [f"| {_cell(r['claim'])} ({r['source']}) | {r['study']} | {_cell(short_measure(r['measure']))} |"
              f" {r['window']} | {_effect_text(r)} | {r['n_seeds']} | {r['verdict']} |" for _, r in table.iterrows()]
    detail = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    detail += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    text = header + "\n".join(short) + "\n"
    if sensitivity is not None and len(sensitivity):
        text += ("\n## The learning-rate verdict at other usable fractions\n\nA learning rate is usable when"
                 " its run reaches chance + fraction x (best mean - chance) test accuracy; the verdict"
                 " above uses the configured fraction.\n\n| study | usable fraction | effect (log10 lr) |"
                 " exact p | seeds | verdict |\n| --- | --- | --- | --- | --- | --- |\n")
        text += "".join(f"| {r.study} | {r.usable_fraction:g} | {_cell(r.effect)} | {_cell(r.p_value)} |"
                        f" {r.n_seeds} | {r.verdict} |\n" for r in sensitivity.itertuples(index=False))
    return text + "\n## Detail\n\n" + "\n".join(detail) + "\n"


def short_measure(measure: str) -> str:
    """The measure's name, up to its first ';' (the detail table has all of it)."""
    return measure.split(";")[0]


def claims(studies_cfg: Mapping, tables: Mapping[str, Path], out_csv: Path, out_md: Path,
           rules: ClaimRules | None = None) -> pd.DataFrame:
    """Evaluate every claim each enabled study lists, from its tables folder in ``tables``
    (study -> results/tables/<study>); write the CSV and Markdown tables."""
    rules = rules or ClaimRules()
    rows = [row for study, cfg in studies_cfg.items() if cfg.get("enabled", True)
            for kind in cfg.get("claims", []) for row in evaluate(study, kind, cfg, tables.get(study), rules)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(out_csv, table)
    write_text(out_md, to_markdown(table, usable_fraction_sensitivity(studies_cfg, tables, rules)))
    return table
