"""Lubana et al. 2021 on normalisers beyond BN: GroupNorm's small groups inflate the gradients
of the early layers at initialisation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...tables.view import StudyView
from ..measures import keyed
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules
from ..windows import AT_INIT


def over_group_sizes(data: StudyView, variant: str, min_sizes: int, fn) -> pd.Series:
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
    return keyed(out, keys)


def group_size_slope(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and lr): the least-squares slope of log10 of the first normalised layer's gradient
    norm at initialisation against log2 of the group size, i.e. the log10 change per doubling of
    the group. A slope, not a rank correlation: a rank correlation over a few group sizes takes a
    handful of values, every seed often gives exactly -1, and a zero-width interval decides nothing."""
    return over_group_sizes(data, variant, 2, lambda size, grad: np.polyfit(
        np.log2(size), np.log10(grad.clip(lower=1e-30)), 1)[0])


def group_size_rank_correlation(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and lr): Spearman's rank correlation over the group sizes between the first
    normalised layer's gradient norm at initialisation and the group size (the sign Lubana et al.
    report). It takes few values (often exactly -1 or +1 for every seed), so its row gets the exact
    sign-flip test, which needs 5 seeds; the slope row above decides with fewer."""
    from scipy.stats import spearmanr

    return over_group_sizes(data, variant, 3, lambda size, grad: spearmanr(size, grad).statistic)


CLAIMS = (
    Claim(
        "group_size_gradients", "Smaller groups give larger first-layer gradients", "Lubana 2021",
        "Lubana et al. 2021: small groups inflate early layers' gradient norms (GroupNorm)",
        (Row("slope", "log10 change of the first layer's gradient norm at initialisation per doubling of"
             " the group size (least-squares slope over the study's group sizes); groupnorm's value per seed"
             " (negative = smaller groups, larger gradients)", group_size_slope, "below", window=AT_INIT,
             unit="value"),
         Row("rank_correlation", "Spearman's rank correlation over group sizes between the first layer's gradient"
             " norm at initialisation and the group size, groupnorm's value per seed (Lubana et al.'s sign: negative);"
             " exact sign-flip test", group_size_rank_correlation, "below", window=AT_INIT, exact=True,
             unit="value")),
        # a measure at initialisation: whether the short runs leave chance is beside the point (on
        # CIFAR-10, 20 steps of GroupNorm at lr 0.1 stay below 15%)
        findings=(("Lubana 2021", SUPPORTED),), variants=("groupnorm", "groupnorm"), paired=False,
        must_train=None, grid="norm.group_size", tables=("activations",)),
)
