"""Statistics over seeds, shared by the figures and the claims table (scipy.stats does the maths).

Seeds are the experimental unit. A continuous measure gets a two-sided Student-t interval for the
mean of one value per seed; the figures draw the same interval as their bands, so a band in a
figure and a CI in the claims table mean the same thing. A t interval needs a spread: with one
seed, or seeds that agree exactly (a measure on a grid, such as the largest usable learning
rate), it has zero width and is no evidence. Such measures get an exact sign-flip test over the
seeds instead, whose smallest attainable p-value (1 / 2^n) says how many seeds a verdict needs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


class MeanCI(NamedTuple):
    """A mean over seeds with its confidence interval (NaN bounds without a spread)."""

    mean: float
    low: float
    high: float
    n: int


def finite_values(values) -> np.ndarray:
    """The finite entries of ``values`` as floats: NaN/inf (diverged runs) carry no information."""
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided `confidence` quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    from scipy import stats as scipy_stats  # here, not at import: claim records import this module while the DAG is planned

    return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))


def mean_ci(values, confidence: float = CONFIDENCE) -> MeanCI:
    """Mean of per-seed values and its two-sided t confidence interval.

    Non-finite values are dropped first. Fewer than two values, or no spread at all, give NaN
    bounds: a zero-width interval is not evidence (see `sign_flip_p`).
    """
    sample = finite_values(values)
    n = int(sample.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    mean = float(sample.mean())
    spread = float(sample.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sample.min() == sample.max():  # not `spread == 0`: the std of equal floats can be 1e-17
        return MeanCI(mean, float("nan"), float("nan"), n)
    half_width = t_quantile(n - 1, confidence) * spread / np.sqrt(n)
    return MeanCI(mean, float(mean - half_width), float(mean + half_width), n)


def sign_flip_p(values, threshold: float = 0.0, alternative: str = "greater") -> float:
    """Exact one-sided sign-flip permutation p-value for "the per-seed values lie above (greater)
    or below (less) `threshold`": the share of the 2^n sign assignments of the deviations whose
    mean is at least as extreme as observed. Seeds that sit exactly on the threshold carry no
    sign. With n seeds the smallest attainable p is 1 / 2^n."""
    deviations = finite_values(values) - threshold
    if deviations.size == 0:
        return 1.0
    from scipy import stats as scipy_stats

    result = scipy_stats.permutation_test((deviations,), np.mean, permutation_type="samples",
                                          alternative=alternative, n_resamples=np.inf)
    return float(result.pvalue)


def smallest_p(n: int) -> float:
    """The smallest p-value a one-sided sign-flip test over n seeds can give."""
    return 0.5 ** n if n else 1.0


def paired_differences(treated: pd.Series, reference: pd.Series) -> pd.Series:
    """treated - reference for the seeds both have (index = seed), non-finite pairs dropped.

    Pairing by seed removes the seed-to-seed variation both variants share (same data order and,
    for equal shapes, the same initial draw), which is what makes a few seeds enough.
    """
    joined = pd.concat({"treated": treated, "reference": reference}, axis=1, join="inner")
    differences = joined["treated"] - joined["reference"]
    return differences[np.isfinite(differences.to_numpy(dtype=float))]
