"""Confidence intervals over seeds, shared by the figures and the claims table.

Seeds are the experimental unit: every interval here is a two-sided Student-t interval for the
mean of one value per seed. The figures (seaborn ``errorbar=ci_bounds``) and the claims table use the
same function, so a band in a figure and a CI in the claims table mean the same thing.

scipy is not a dependency: the 97.5% t-quantiles are tabulated (exact to 4 decimals, from
``scipy.stats.t.ppf``; the tests check the table against scipy when it happens to be installed)
and interpolated linearly in 1/df beyond df = 30, where the error is below 1e-3.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

CONFIDENCE = 0.95

# df -> 0.975 quantile of Student's t (two-sided 95%).
_T975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060,
    9: 2.2622, 10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314,
    16: 2.1199, 17: 2.1098, 18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739,
    23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452,
    30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799,
}
_Z975 = 1.959964  # df -> infinity


class MeanCI(NamedTuple):
    """A mean over seeds with its confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


def t_quantile_975(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom (table + 1/df interpolation)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    knots = sorted(_T975) + [np.inf]
    values = [_T975[k] for k in sorted(_T975)] + [_Z975]
    inverse_knots = [1.0 / k for k in knots]  # decreasing; 1/inf = 0
    # np.interp needs increasing x: reverse both.
    return float(np.interp(1.0 / df, inverse_knots[::-1], values[::-1]))


def finite_values(values) -> np.ndarray:
    """The finite entries of ``values`` as floats: NaN/inf (diverged runs) carry no information."""
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def mean_ci(values, confidence: float = CONFIDENCE) -> MeanCI:
    """Mean of per-seed values and its two-sided t confidence interval.

    Non-finite values are dropped first. With fewer than two values there is no spread to estimate,
    so the bounds are NaN (the claims table turns that into "inconclusive").
    """
    if not np.isclose(confidence, CONFIDENCE):
        raise ValueError(f"only {CONFIDENCE:.0%} intervals are tabulated, got {confidence}")
    sample = finite_values(values)
    n = int(sample.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    mean = float(sample.mean())
    if n < 2:
        return MeanCI(mean, float("nan"), float("nan"), n)
    half_width = t_quantile_975(n - 1) * float(sample.std(ddof=1)) / np.sqrt(n)
    return MeanCI(mean, mean - half_width, mean + half_width, n)


def ci_bounds(values) -> tuple[float, float]:
    """(low, high) of the 95% t interval: the ``errorbar`` callable handed to seaborn."""
    interval = mean_ci(values)
    return interval.low, interval.high


def paired_differences(treated: pd.Series, reference: pd.Series) -> pd.Series:
    """treated - reference for the seeds both have (index = seed), non-finite pairs dropped.

    Pairing by seed removes the seed-to-seed variation both variants share (same data order and,
    for equal shapes, the same initial draw), which is what makes a few seeds enough.
    """
    joined = pd.concat({"treated": treated, "reference": reference}, axis=1, join="inner")
    differences = joined["treated"] - joined["reference"]
    return differences[np.isfinite(differences.to_numpy(dtype=float))]

