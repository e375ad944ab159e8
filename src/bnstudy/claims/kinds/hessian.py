"""The Hessian beyond the paper: Ghorbani et al. 2019's outliers (large isolated eigenvalues that
hold the gradient, absent with BN, back with whole-data statistics) and Cohen et al. 2021's edge of
stability (under full-batch GD the sharpness rises to 2/lr and hovers there)."""

from __future__ import annotations

import pandas as pd

from ...tables import derived
from ...files import TableError
from ...tables.view import StudyView
from ..measures import by_condition
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules
from ..windows import in_window, mean_per_run
from .ics import PAIRING, over_windows

# ---------------------------------------------------------------------------------------------
# Ghorbani et al.: the outlier group, by its gap, per bn_mode


def _in_mode(spectrum: pd.DataFrame, mode: str) -> pd.DataFrame:
    if "bn_mode" not in spectrum.columns:
        return spectrum if mode == "batch" else spectrum.iloc[:0]
    return spectrum[spectrum["bn_mode"] == mode]


def outlier_frame(data: StudyView, variant: str, rules: ClaimRules, window: str, mode: str) -> pd.DataFrame:
    spectrum = in_window(data.table("spectrum"), window, rules, data.runs)
    spectrum = _in_mode(spectrum[spectrum["variant"] == variant], mode)
    return derived.outlier_groups(spectrum, rules.classes)


def outlier_gap(mode: str):
    """window -> time-weighted mean over the window's steps of log10 (lambda_k / lambda_k+1), the
    separation of the outlier group (`derived.outlier_groups`) in bn_mode `mode`."""
    def in_window_of(window: str):
        def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
            frame = outlier_frame(data, variant, rules, window, mode)
            return by_condition(mean_per_run(frame, frame["gap"], log=True), data)
        return metric
    return in_window_of


def outlier_share(window: str):
    """Time-weighted mean over the window's steps of the share of ||g||^2 in the outlier group's
    span (batch statistics)."""
    def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        frame = outlier_frame(data, variant, rules, window, "batch")
        return by_condition(mean_per_run(frame, frame["gradient_share"], log=False), data)
    return metric


def gap_returns(window: str):
    """The variant's outlier separation with running statistics over the one with batch statistics
    (log10, per run): Ghorbani et al. find BN's outliers return with whole-data statistics."""
    def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        spectrum = data.table("spectrum")
        if "bn_mode" not in spectrum.columns or set(spectrum["bn_mode"]) < {"batch", "running"}:
            raise TableError("the spectrum has rows in one bn_mode: set the study's spectrum.bn_mode: "
                             "[batch, running]")
        running = outlier_gap("running")(window)(data, variant, rules)
        batch = outlier_gap("batch")(window)(data, variant, rules)
        return (running - batch).dropna()
    return metric


# ---------------------------------------------------------------------------------------------
# Cohen et al.: the edge of stability over its window


def eos_frame(data: StudyView, variant: str, rules: ClaimRules) -> pd.DataFrame:
    sharpness, train = data.table("sharpness"), data.table("train")
    return derived.eos_window(sharpness[sharpness["variant"] == variant], train[train["variant"] == variant],
                              rules.eos_loss_fraction)


def eos_median_ratio(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: the median of lr x sharpness over the analysed steps of its window (from the first
    crossing of 2 by sharpening to the training loss falling below eos_loss_fraction of its first
    value). A run that starts above 2/lr has no crossing and no value."""
    frame = eos_frame(data, variant, rules)
    inside = frame[frame["in_window"].astype(bool)]
    return by_condition(inside.groupby("run")["ratio"].median(), data)


def starts_above_edge(variant: str):
    """The row is a measurement when every run of `variant` starts at or above 2/lr: it never
    reaches the edge by sharpening, which is what the finding describes."""
    def why(data: StudyView, rules: ClaimRules) -> str | None:
        frame = eos_frame(data, variant, rules)
        starts = frame.groupby("run")["starts_above"].first()
        if len(starts) and starts.all():
            return (f"every {variant} run starts with lr x sharpness >= 2 (no crossing by sharpening to test); "
                    f"choose learning rates below 2 / its initial sharpness")
        return None
    return why


def _band(rules: ClaimRules) -> tuple[float, float]:
    return rules.eos_low, rules.eos_high


_MEDIAN = ("median of lr x largest Hessian eigenvalue (sharpness analysis, every analysed step) from its first"
           " crossing of 2 by sharpening to the training loss falling below eos_loss_fraction of its first value"
           " (runs starting above 2/lr left out), mean over learning rates")
_SEPARATION = ("log10 of the outlier group's separation lambda_k / lambda_k+1 (k <= C - 1 chosen by the largest"
               " gap among the top converged eigenvalues)")

CLAIMS = (
    Claim(
        "hessian_outliers", "Without BN, isolated Hessian outliers hold the gradient", "Ghorbani 2019",
        "Ghorbani et al. 2019: without BN large isolated eigenvalues appear early in training and the"
        " gradient concentrates in their eigenspace; with BN both are almost absent, and they return when"
        " the network is normalised with whole-data (running) statistics",
        over_windows(
            Row("outlier_gap", f"{_SEPARATION}, batch statistics, {{steps}}; " + PAIRING + " (log10 ratio)",
                outlier_gap("batch"), "below"),
            Row("gradient_share", "share of ||g||^2 in the span of the outlier group's eigenvectors, batch"
                " statistics, {steps}; " + PAIRING, outlier_share, "below", unit="share"),
            Row("outliers_return", f"{_SEPARATION} with running statistics over the same with batch statistics,"
                " {steps}; batchnorm's value per seed (above 0: the outliers return)", gap_returns, "above",
                variant="batchnorm", paired=False)),
        findings=(("Ghorbani 2019", SUPPORTED),), tables=("train", "spectrum")),
    Claim(
        "edge_of_stability", "Full-batch gradient descent runs at the edge of stability", "Cohen 2021",
        "Cohen et al. 2021: under full-batch GD the top Hessian eigenvalue rises until it reaches 2/lr,"
        " then hovers just above it while the loss keeps falling non-monotonically (their band here:"
        " claim_rules eos_low to eos_high, a choice: 'just above 2')",
        (Row("standard_ratio", f"{_MEDIAN}; standard network", eos_median_ratio, "within",
             threshold=_band, unit="value", variant="standard", measured_only=starts_above_edge("standard")),
         Row("batchnorm_ratio", f"{_MEDIAN}; BN network", eos_median_ratio, "within", threshold=_band,
             unit="value", variant="batchnorm", measured_only=starts_above_edge("batchnorm"))),
        findings=(("Cohen 2021", SUPPORTED),), variants=("standard", "batchnorm"), paired=False,
        tables=("train", "sharpness")),
)
