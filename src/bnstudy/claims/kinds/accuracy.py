"""Claims about final accuracies: Ioffe & Szegedy 2015's four claims (higher learning rates, less
sensitivity to initialisation, regularisation, usable sigmoids) and their MNIST Fig. 1 (faster
training), and Santurkar et al. 2018's headline (BN reaches a higher test accuracy)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...tables.view import StudyView
from ..measures import accuracy_or_chance, as_multi, at_best_lr, indexed, keyed
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules

_BEST_LR = "batchnorm minus standard, each at its own best lr (chosen by the mean over seeds), paired by seed"


def best_lr_test_accuracy(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Final test accuracy at the variant's own best lr (diverged = chance), per seed and grid point."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    return indexed(chosen, chosen["value"], data.condition_keys(exclude=["lr"]))


def usable_bar(data: StudyView, rules: ClaimRules) -> float:
    """The test accuracy a run must reach for its lr to count as usable: chance +
    usable_fraction * (best - chance), best = the highest mean over seeds of any (variant, lr,
    grid point) in the study (diverged = chance). A mean, so one lucky run cannot move the bar;
    the same bar for both variants."""
    runs = data.runs.assign(value=accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    best = runs.groupby(["variant", "lr", *data.grid], dropna=False)["value"].mean().max()
    return rules.chance_accuracy + rules.usable_fraction * (best - rules.chance_accuracy)


def largest_usable_log_lr(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
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
    largest = as_multi(np.log10(usable["lr"]).groupby([usable[k] for k in keys]).max(), keys)
    return largest.reindex(conditions).fillna(floor)


def accuracy_spread_over_init(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Max minus min over the init scales of the final test accuracy at the variant's own best
    lr for each init scale (diverged = chance), per seed."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    keys = data.condition_keys(exclude=["lr", "init_scale"])
    grouped = chosen.groupby(keys)["value"]
    return as_multi(grouped.max() - grouped.min(), keys)


def dropout_gain(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """What dropout adds: the best final test accuracy over the dropout rates > 0 minus the one
    without dropout, each at the variant's own best lr for that rate, per seed (and other grid
    values). A network that regularises itself gains less."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, "final_test_accuracy", rules))
    keys = data.condition_keys(exclude=["lr", "dropout"])
    without = chosen[chosen["dropout"] == 0].set_index(keys)["value"]
    with_ = chosen[chosen["dropout"] > 0].groupby(keys)["value"].max()
    return as_multi((with_ - without).dropna(), keys)


def generalisation_gap(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
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


def log_steps_to_reach_standard(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
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
    return keyed(out, keys)


def reference_fails_within_grid(data: StudyView, claim: Claim, rules: ClaimRules) -> str | None:
    """If the reference is still usable at the largest lr, the grid cannot show a higher one for BN."""
    top = np.log10(data.runs["lr"].max())
    reference = largest_usable_log_lr(data, claim.reference, rules)
    if np.isclose(reference, top).any():
        return (f"{claim.reference} is still usable at the largest learning rate "
                f"({10 ** top:g}): the grid is too narrow to show a higher usable rate")
    return None


def dropout_grid_has_zero(study, setup) -> str | None:
    if 0 not in study["grid"].get("model.dropout", []):
        return "it measures what dropout adds: include 0 in grid model.dropout"
    return None


CLAIMS = (
    Claim(
        "higher_learning_rates", "BN allows higher learning rates", "2015",
        "2015: BN enables much higher learning rates; BN-x5 (5x the lr) reaches the Inception"
        " baseline's 72.2% in 14x fewer steps and BN-x30 (30x) also trains",
        (Row("usable_lr", "log10 of the largest lr whose run completes with final test accuracy (whole test set)"
             " >= chance + usable_fraction x (best mean over seeds - chance); batchnorm minus"
             " standard per seed (log10 ratio)", largest_usable_log_lr, "above", exact=True),),
        findings=(("2015", SUPPORTED),), min_lrs=2, checks=(reference_fails_within_grid,)),
    # each variant at its own best learning rate, per init scale
    Claim(
        "initialisation", "BN makes training less sensitive to initialisation", "2015",
        "2015: with BN one can be less careful about initialisation (no number given)",
        (Row("spread", "spread (max - min) over init scales of final test accuracy, each variant at its own"
             " best lr per init scale (diverged = chance); batchnorm minus standard per seed",
             accuracy_spread_over_init, "below", unit="accuracy"),), findings=(("2015", SUPPORTED),),
        min_lrs=2, grid="model.init_scale"),
    Claim(
        "regularisation", "BN regularises (less need for dropout)", "2015",
        "2015: BN regularises; BN-Inception drops dropout without more overfitting",
        (Row("dropout_gain", "test accuracy gained by dropout (best rate > 0 minus none, each at its own best lr);"
             " batchnorm minus standard per seed", dropout_gain, "below", unit="accuracy"),),
        findings=(("2015", SUPPORTED),), grid="model.dropout", design=(dropout_grid_has_zero,)),
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
        min_lrs=2, activation="sigmoid", must_train="batchnorm"),
    Claim(
        "faster_training", "BN trains faster", "2015",
        "2015 (Fig. 1, MNIST): the BN network trains faster and reaches higher test accuracy;"
        " BN-x5 reaches the Inception baseline in 14x fewer steps",
        (Row("steps", "log10 of the steps to reach the standard network's final test accuracy (same seed);"
             " batchnorm minus standard per seed (negative = BN faster)", log_steps_to_reach_standard,
             "below", exact=True),), findings=(("2015", SUPPORTED),), tables=("eval",)),
    Claim(
        "bn_trains_better", "BN reaches a higher test accuracy", "2018",
        "2018 (Fig. 1, VGG on CIFAR-10): 83% test accuracy with BN, 80% without; asked again with skip"
        " connections (He et al.'s ResNet)",
        (Row("accuracy", "final test accuracy (eval mode, whole test set; diverged = chance); " + _BEST_LR,
             best_lr_test_accuracy, "above", unit="accuracy"),), findings=(("2018", SUPPORTED),)),
)
