"""The verdict rule: per-seed effects -> effect, interval, p-value, test, verdict and reason.

Continuous measures get the 95% Student-t interval over seeds: supported if it lies entirely on
the claim's side of the threshold, not supported if entirely on the other side or touching it (no
effect is not support), inconclusive if it straddles. Measures on a grid, and any measure whose
seeds agree exactly (a zero-width interval is no evidence), get an exact one-sided sign-flip test
over seeds at level `alpha`. A band ("within") is decided by where its t interval lies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..tables.stats import mean_ci, paired_differences, sign_flip_p, smallest_p
from ..tables.view import StudyView
from .record import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim, Row
from ..config.claim_rules import ClaimRules


def decide(effects, threshold: float, holds: str, exact: bool, rules: ClaimRules,
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
    if not exact and np.isfinite(interval.low):
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
    why = "a measure on a grid" if exact else "the seeds agree exactly (a zero-width interval is no evidence)"
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


def seed_effects(data: StudyView, claim: Claim, row: Row, rules: ClaimRules) -> pd.Series:
    """Per-seed mean of the paired treated-minus-reference differences (or, for a claim about one
    variant, of its own values)."""
    treated = row.metric(data, row.variant or claim.treated, rules)
    if claim.row_paired(row):
        values = paired_differences(treated, row.metric(data, claim.reference, rules))
    else:
        values = treated[np.isfinite(treated.to_numpy(dtype=float))]
    if values.empty:
        return pd.Series(dtype=float)
    return values.groupby(level="seed").mean()
