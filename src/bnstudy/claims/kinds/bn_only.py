"""Frankle, Schwab & Morcos 2021 ("Training BatchNorm and Only BatchNorm", arXiv 2003.00152): with
every other weight frozen at its random initialisation, training only BatchNorm's affine
parameters (gamma, beta) reaches an accuracy far above chance, and above training the same number
of randomly chosen parameters elsewhere in the network.

The study trains one variant (batchnorm) on a grid over `optim.train_only` (all, bn_affine,
random_matched; bnstudy.config.spec.TRAIN_ONLY): the three kinds of training are grid values, not
variants, so the measures here compare grid values of the same seed themselves and the claim's
rows are unpaired in the record's sense. Each kind of training is taken at its own best learning
rate (chosen by the mean over seeds, `measures.at_best_lr`): BN-only training moves few
parameters and typically wants a larger rate than full training, and the random control gets the
same chance.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ...tables.stats import paired_differences
from ...tables.view import StudyView
from ..measures import accuracy_or_chance, at_best_lr, indexed
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules

GRID = "optim.train_only"
COLUMN = GRID.rsplit(".", 1)[-1]  # its column in the study tables (tables.grid_columns)
MODES = ("all", "bn_affine", "random_matched")
_TEST = "final_test_accuracy"


def mode_accuracy(data: StudyView, variant: str, rules: ClaimRules, mode: str) -> pd.Series:
    """Final test accuracy (whole test set; diverged = chance) of `variant`'s runs trained with
    `optim.train_only: mode`, at that mode's own best lr, per seed (and other grid values)."""
    chosen = at_best_lr(data, variant, accuracy_or_chance(data.runs, _TEST, rules))
    chosen = chosen[chosen[COLUMN] == mode]
    return indexed(chosen, chosen["value"], data.condition_keys(exclude=["lr", COLUMN]))


def bn_only_accuracy(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    return mode_accuracy(data, variant, rules, "bn_affine")


def full_accuracy(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    return mode_accuracy(data, variant, rules, "all")


def bn_only_minus_random(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """BN-only minus the random_matched control, paired by seed (and other grid values), each at
    its own best lr."""
    return paired_differences(mode_accuracy(data, variant, rules, "bn_affine"),
                              mode_accuracy(data, variant, rules, "random_matched"))


def _chance_line(rules: ClaimRules) -> float:
    # "far above chance" as a threshold on the existing gates (a ClaimRules key of its own would
    # need config/claim_rules.py): the line a network must clear to have left chance, chance_accuracy +
    # chance_margin (0.1 + 0.05 by default)
    return rules.chance_accuracy + rules.chance_margin


def grid_has_every_mode(study: Mapping, setup: Mapping) -> str | None:
    """Design check: the study's grid over optim.train_only holds all three kinds of training."""
    values = list((study.get("grid") or {}).get(GRID, []))
    missing = [mode for mode in MODES if mode not in values]
    if missing:
        return (f"it compares BN-only training with the random_matched control and with full training: "
                f"give the study grid: {{{GRID}: [{', '.join(MODES)}]}} (missing {missing})")
    return None


def runs_of_every_mode(data: StudyView, claim: Claim, rules: ClaimRules) -> str | None:
    """Data check: the tables hold runs of the treated variant for every kind of training."""
    if COLUMN not in data.runs.columns:
        return f"the study's tables have no {COLUMN} column: it needs grid {GRID}"
    present = set(data.runs.loc[data.runs["variant"] == claim.treated, COLUMN].dropna())
    missing = [mode for mode in MODES if mode not in present]
    return f"no {claim.treated} runs with {COLUMN} {missing}" if missing else None


CLAIMS = (
    Claim(
        "bn_only_trains", "Training only BN's affine parameters reaches far above chance", "Frankle 2021",
        "Frankle, Schwab & Morcos 2021: with all other weights frozen at their random initialisation, training"
        " only BatchNorm's gamma and beta reaches surprisingly high accuracy (deep ResNets 82% on CIFAR-10),"
        " far higher than training an equal number of randomly chosen parameters elsewhere in the network",
        (Row("bn_only", "final test accuracy (eval mode, whole test set; diverged = chance) of batchnorm trained"
             " with optim.train_only: bn_affine (only the normalisers' gamma and beta; every other weight frozen at"
             " its initialisation), at its own best lr; holds if above chance_accuracy + chance_margin",
             bn_only_accuracy, "above", unit="accuracy", threshold=_chance_line),
         Row("vs_random", "final test accuracy of bn_affine minus random_matched (as many randomly chosen scalars"
             " among the other weights, gamma and beta frozen), paired by seed, each at its own best lr"
             " (diverged = chance; a difference of accuracies, 0.01 = one point); holds if above 0",
             bn_only_minus_random, "above", unit="difference"),
         Row("full", "final test accuracy of the same network with every parameter trained (optim.train_only: all),"
             " at its own best lr (diverged = chance): the scale BN-only training is read against",
             full_accuracy, "above", unit="accuracy", threshold=_chance_line, reported=True)),
        findings=(("Frankle 2021", SUPPORTED),), variants=("batchnorm", "batchnorm"), paired=False,
        must_train="batchnorm", grid=GRID, design=(grid_has_every_mode,), checks=(runs_of_every_mode,)),
)
