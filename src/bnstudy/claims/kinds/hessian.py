"""The Hessian beyond the paper: Ghorbani et al. 2019's outliers (large isolated eigenvalues that
hold the gradient, absent with BN) and Cohen et al. 2021's edge of stability (under full-batch GD
the sharpness rises to 2/lr and hovers there)."""

from __future__ import annotations

import pandas as pd

from ... import derived
from ...view import StudyView
from ..measures import by_condition
from ..record import SUPPORTED, Claim, Row
from ..rules import ClaimRules
from ..windows import in_window, mean_per_run
from .ics import PAIRING, over_windows


def outlier_log_ratio(window: str):
    """Mean over the window's steps of log10 (largest eigenvalue / bulk edge of the density)."""
    def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        spectrum = in_window(data.table("spectrum"), window, rules, data.runs)
        density = in_window(data.table("density"), window, rules, data.runs)
        frame = derived.outlier_ratio(spectrum[spectrum["variant"] == variant],
                                      density[density["variant"] == variant], rules.bulk_mass)
        return by_condition(mean_per_run(frame, frame["outlier_ratio"], log=True), data)
    return metric


def top_gradient_share(window: str):
    """Mean over the window's steps of the share of ||g||^2 in the top-k Hessian eigenvectors."""
    def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        spectrum = in_window(data.table("spectrum"), window, rules, data.runs)
        frame = derived.spectrum_summary(spectrum[spectrum["variant"] == variant])
        return by_condition(mean_per_run(frame, frame["gradient_share"], log=False), data)
    return metric


def eos_median_ratio(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: the median of lr x sharpness over the checkpoints from the first one at which it
    reached 2 (runs that never reach it have none)."""
    spectrum = data.table("spectrum")
    ratios = derived.eos_ratios(spectrum[spectrum["variant"] == variant])
    after = ratios[ratios["after_crossing"]]
    return by_condition(after.groupby("run")["ratio"].median(), data)


def _band(rules: ClaimRules) -> tuple[float, float]:
    return rules.eos_low, rules.eos_high


CLAIMS = (
    Claim(
        "hessian_outliers", "Without BN, isolated Hessian outliers hold the gradient", "Ghorbani 2019",
        "Ghorbani et al. 2019: without BN large isolated eigenvalues appear early in training and the"
        " gradient concentrates in their eigenspace; with BN both are almost absent",
        over_windows(
            Row("outlier_ratio", "log10 (largest eigenvalue / edge of the bulk: the 1 - bulk_mass quantile of the"
                " SLQ density), {steps}; " + PAIRING + " (log10 ratio)", outlier_log_ratio, "below"),
            Row("gradient_share", "share of ||g||^2 in the top-k Hessian eigenvectors, {steps}; "
                + PAIRING, top_gradient_share, "below", unit="share")),
        findings=(("Ghorbani 2019", SUPPORTED),), tables=("train", "spectrum", "density")),
    Claim(
        "edge_of_stability", "Full-batch gradient descent runs at the edge of stability", "Cohen 2021",
        "Cohen et al. 2021: under full-batch GD the top Hessian eigenvalue rises until it reaches 2/lr,"
        " then hovers just above it while the loss keeps falling non-monotonically",
        (Row("standard_ratio", "median of lr x largest Hessian eigenvalue over the checkpoints from its first"
             " crossing of 2, standard network, mean over learning rates", eos_median_ratio, "within",
             threshold=_band, unit="value", variant="standard"),
         Row("batchnorm_ratio", "the same, BN network (reported beside it: the source states no finding"
             " for BN)", eos_median_ratio, "within", threshold=_band, unit="value", variant="batchnorm", reported=True)),
        findings=(("Cohen 2021", SUPPORTED),), variants=("standard", "batchnorm"), paired=False,
        tables=("train", "spectrum")),
)
