"""BatchNorm at initialisation as a function of depth: Yang, Pennington, Rao, Sohl-Dickstein &
Schoenholz 2019 (gradients explode exponentially with depth with BN) and Daneshmand, Kohler, Bach,
Hofmann & Lucchi 2020 (without normalisation the representations' rank collapses with depth; BN
keeps it). Both read the activations analysis at step 0 of networks of several depths (a study
grid over model.depth, or for an MLP over model.hidden_layers)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...tables.view import StudyView
from ..measures import keyed
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules
from ..windows import AT_INIT


DEPTH_KEYS = ("model.depth", "model.hidden_layers")  # VGG / ResNet depth, or an MLP's number of hidden layers


def at_init(data: StudyView, variant: str) -> tuple[pd.DataFrame, list[str]]:
    """The variant's step-0 activations rows (one BN mode), and the condition keys other than depth."""
    table = data.table("activations")
    table = table[(table["variant"] == variant) & (table["step"] == 0)]
    if "bn_mode" in table.columns and len(table):
        table = table[table["bn_mode"] == table["bn_mode"].iloc[0]]
    return table, [k for k in data.condition_keys(exclude=["depth", "hidden_layers"]) if k in table.columns]


def over_depths(data: StudyView, variant: str, value) -> pd.Series:
    """Per seed (and lr): the least-squares slope, over the study's depths, of log10 `value(run's
    step-0 activations rows)` against the run's number of normalised layers (its deepest layer)."""
    table, keys = at_init(data, variant)
    per_run = table.groupby("run").apply(lambda rows: pd.Series({
        "layers": float(rows["layer"].max()), "value": float(value(rows))}), include_groups=False)
    per_run = per_run.join(table.drop_duplicates("run").set_index("run")[keys])
    out = {}
    for key, group in per_run.groupby(keys):
        group = group[np.isfinite(group["value"]) & (group["value"] > 0)]
        if group["layers"].nunique() >= 2:
            out[key if isinstance(key, tuple) else (key,)] = float(
                np.polyfit(group["layers"], np.log10(group["value"]), 1)[0])
    return keyed(out, keys)


def rank_through_layers(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and lr): log10 of the stable rank at the last layer over that at the first, in the
    study's deepest network: Daneshmand et al.'s rank against the layer's depth within one network.
    (The slope over the networks' depths reads last layers only; where the rank has collapsed
    within the shallowest network already, that slope is near 0 whatever the depth.)"""
    table, keys = at_init(data, variant)
    out = {}
    for key, group in table.groupby(keys):
        deepest = group[group["run"].isin(group.loc[group["layer"] == group["layer"].max(), "run"])]
        first = deepest.loc[deepest["layer"] == deepest["layer"].min(), "stable_rank"].iloc[0]
        last = deepest.loc[deepest["layer"] == deepest["layer"].max(), "stable_rank"].iloc[0]
        if first > 0 and last > 0:
            out[key if isinstance(key, tuple) else (key,)] = float(np.log10(last / first))
    return keyed(out, keys)


def first_layer_gradient(rows: pd.DataFrame) -> float:
    return rows.loc[rows["layer"] == rows["layer"].min(), "grad_norm"].iloc[0]


def last_layer_rank(rows: pd.DataFrame) -> float:
    return rows.loc[rows["layer"] == rows["layer"].max(), "stable_rank"].iloc[0]


def gradient_slope(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    return over_depths(data, variant, first_layer_gradient)


def rank_slope(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    return over_depths(data, variant, last_layer_rank)


_PER_LAYER = " per normalised layer of depth (least-squares slope over the study's depths, at initialisation)"

CLAIMS = (
    Claim(
        "gradient_explosion", "With BN, gradients at initialisation grow exponentially with depth", "Yang 2019",
        "Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019 (A Mean Field Theory of Batch Normalization):"
        " in deep BN networks the gradient norm at initialisation explodes exponentially with depth, and no"
        " choice of initialisation removes it",
        # Yang et al.'s finding is about BN networks themselves: BN's own slope is the test. Against
        # the standard network it is a measurement: that network's slope is set by its
        # initialisation (Glorot in the VGG configs: its gradients vanish with depth; He in the MLPs:
        # flat), which Yang et al. make no claim about
        (Row("slope", "log10 change of the first layer's weight-gradient norm ||dL/dW_1||" + _PER_LAYER
             + "; batchnorm's own value per seed (above 0: its gradients grow exponentially with depth)",
             gradient_slope, "above", window=AT_INIT, unit="value", variant="batchnorm", paired=False),
         Row("vs_standard", "the same slope, batchnorm minus standard, paired by seed (the standard network's"
             " own slope depends on its initialisation)", gradient_slope, "above", window=AT_INIT,
             unit="value", reported=True)),
        findings=(("Yang 2019", SUPPORTED),), grid=DEPTH_KEYS, must_train=None, tables=("activations",)),
    Claim(
        "rank_collapse", "Without a normaliser the representations' rank collapses with depth; BN keeps it",
        "Daneshmand 2020",
        "Daneshmand, Kohler, Bach, Hofmann & Lucchi 2020: without normalisation the rank of a randomly"
        " initialised deep network's representations collapses with depth; with BN it stays of the order of"
        " the width",
        (Row("standard_slope", "log10 change of the last layer's stable rank (its block output, after the"
             " non-linearity, over the analysis batch)" + _PER_LAYER + "; standard's value per seed (below 0:"
             " the rank falls with depth)", rank_slope, "below", window=AT_INIT, unit="value",
             variant="standard", paired=False),
         Row("batchnorm_vs_standard", "the same slope, batchnorm minus standard, paired by seed (above 0: BN"
             " keeps the rank as depth grows)", rank_slope, "above", window=AT_INIT, unit="value"),
         Row("standard_through_layers", "stable rank at the last layer over that at the first (block outputs,"
             " after the non-linearity), in the study's deepest network, at initialisation; standard's value"
             " per seed (below x1: the rank falls through the layers)", rank_through_layers, "below",
             window=AT_INIT, variant="standard", paired=False),
         Row("batchnorm_vs_standard_through_layers", "the same ratio, batchnorm over standard, paired by seed"
             " (above x1: BN keeps more of the rank through the layers)", rank_through_layers, "above",
             window=AT_INIT)),
        findings=(("Daneshmand 2020", SUPPORTED),), grid=DEPTH_KEYS, must_train=None,
        tables=("activations",)),
)
