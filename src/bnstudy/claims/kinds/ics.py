"""Internal covariate shift: Ioffe & Szegedy 2015's explanation of BN, and Santurkar et al.
2018's test of it (section 2.2, Definition 2.1, Fig. 3)."""

from __future__ import annotations

import dataclasses

import pandas as pd

from ...tables.view import StudyView
from ..measures import by_condition
from ..record import NOT_SUPPORTED, SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules
from ..windows import INITIALISATION, OVER_TRAINING, in_window, mean_per_run

PAIRING = "batchnorm minus standard, paired by seed, lr and grid values, averaged per seed"
LAYERS = "over the study's layers"


def over_windows(*rows: Row) -> tuple[Row, ...]:
    """Each row early and late in training (the verdicts), then at initialisation (reported apart).
    A row's metric is a factory, window -> metric; `{steps}` in its measure says how the window's
    steps are averaged."""
    return tuple(dataclasses.replace(row, measure=row.measure.format(steps=STEPS[window]), metric=row.metric(window),
                                     window=window)
                 for window in OVER_TRAINING for row in rows)


STEPS = {INITIALISATION: "at step 0"} | dict.fromkeys(
    OVER_TRAINING[:2], "time-weighted mean over the window's steps (trapezoid)")


def ics_rows(data: StudyView, variant: str, rules: ClaimRules, window: str) -> pd.DataFrame:
    """The variant's ICS rows in the window, on the configured layers (layer 1 has no earlier
    layer: its G' is G, so it is left out when no layers are configured)."""
    ics = in_window(data.table("ics"), window, rules, data.runs)
    ics = ics[ics["variant"] == variant]
    layers = [int(x) for x in data.study_cfg.get("layers") or []]
    return ics[ics["layer"].isin(layers)] if layers else ics[ics["layer"] > 1]


def ics_relative(window: str):
    """Mean over steps and layers of log10 ||G - G'|| / ||G||: Definition 2.1 without the scale of
    the layer's gradient (a BN network's is 60-130x larger at initialisation)."""
    def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        ics = ics_rows(data, variant, rules, window)
        return by_condition(mean_per_run(ics, ics["l2_diff"] / ics["grad_norm"], log=True), data)
    return metric


def ics_angle(window: str):
    """Mean over steps and layers of 1 - cos(G, G') (0: the update of the earlier layers leaves
    the gradient's direction unchanged)."""
    def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        ics = ics_rows(data, variant, rules, window)
        return by_condition(mean_per_run(ics, 1 - ics["cosine"], log=False), data)
    return metric


CLAIMS = (
    Claim(
        "reduces_ics", "BN reduces internal covariate shift", "2015",
        "2018 (Fig. 3): BN does NOT reduce ICS; BN networks often show larger ||G - G'|| and, in"
        " the DLN, a cosine near 0",
        over_windows(
            Row("relative", "log10 ||G - G'|| / ||G|| (Definition 2.1 without the gradient's scale), mean"
                f" {LAYERS}, {{steps}}; " + PAIRING + " (log10 ratio)", ics_relative, "below"),
            Row("angle", f"1 - cos(G, G') (Definition 2.1), mean {LAYERS}, {{steps}}; " + PAIRING,
                ics_angle, "below", unit="difference")),
        findings=(("2015", SUPPORTED), ("2018", NOT_SUPPORTED)), tables=("train", "ics")),
)
