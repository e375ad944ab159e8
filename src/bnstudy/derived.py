"""Quantities derived from the spectral and surface analysis tables, shared by the figures and the
claims so that both plot and test the same numbers (pandas only; no torch, no matplotlib).

- `spectrum_summary`: per run and step, the largest and smallest eigenvalue, the trace and the
  share of ||g||^2 in the top-k eigenvectors (`analysis.spectrum`'s table, one row per rank).
- `bulk_edge`, `outlier_ratio`: where the bulk of the spectral density ends (a quantile of the
  stochastic-Lanczos-quadrature distribution) and how far the largest eigenvalue lies beyond it
  (Ghorbani et al. 2019: large isolated eigenvalues without BatchNorm).
- `density_curve`: the smoothed spectral density of a checkpoint (Gaussian kernels on the nodes).
- `basin_radii`: per run and step, the mean over the four half-axes of the 2-D surface of the
  distance at which the loss reaches twice its value at the checkpoint (Li et al. 2018).
- `eos_ratios`: lr x largest eigenvalue per checkpoint, and the checkpoints after it first reached
  2 (Cohen et al. 2021: gradient descent hovers at the edge of stability, sharpness ~ 2 / lr).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

KEYS = ["run", "step"]


def _labels(frame: pd.DataFrame) -> list[str]:
    """The label columns (run, variant, lr, seed, status, grid) of a study table, in order."""
    known = ["run", "variant", "lr", "seed", "status"]
    first = [c for c in frame.columns if c in known]
    grid = [c for c in frame.columns[: frame.columns.get_loc("step")] if c not in known]
    return first + grid


def spectrum_summary(spectrum: pd.DataFrame) -> pd.DataFrame:
    """Per run and step: lambda_max (rank 1), lambda_min (rank -1), trace, trace_se, the gradient
    share in the top-k eigenvectors (k = the largest rank) and whether every search converged."""
    labels = _labels(spectrum)
    top = spectrum[spectrum["rank"] >= 1]
    first = top[top["rank"] == 1].set_index(labels + ["step"])
    out = pd.DataFrame({"lambda_max": first["eigenvalue"], "trace": first["trace"], "trace_se": first["trace_se"]})
    k = top.groupby(labels + ["step"])["rank"].transform("max")
    out["gradient_share"] = top[top["rank"] == k].set_index(labels + ["step"])["gradient_share"]
    smallest = spectrum[spectrum["rank"] == -1].set_index(labels + ["step"])["eigenvalue"]
    out["lambda_min"] = smallest.reindex(out.index)
    out["converged"] = spectrum.groupby(labels + ["step"])["converged"].agg(
        lambda v: bool(pd.Series(v).astype(str).str.lower().isin(["true", "1", "1.0"]).all()))
    return out.reset_index()


def pooled_quadrature(density: pd.DataFrame) -> pd.DataFrame:
    """Per run and step: every start's nodes with their weights divided by the number of starts
    (so a checkpoint's weights sum to 1)."""
    starts = density.groupby(KEYS)["start"].transform("nunique")
    return density.assign(weight=density["weight"] / starts)


def bulk_edge(density: pd.DataFrame, mass: float) -> pd.Series:
    """Per (run, step): the value above which the spectral distribution holds `mass` of its weight
    (its 1 - mass quantile): the edge of the bulk, outliers above it."""
    pooled = pooled_quadrature(density).sort_values("node", ascending=False)
    edges = {}
    for key, group in pooled.groupby(KEYS, sort=False):
        above = group["weight"].cumsum()
        edges[key] = float(group["node"].to_numpy()[np.searchsorted(above.to_numpy(), mass)
                                                    .clip(max=len(group) - 1)])
    return pd.Series(edges, dtype=float).rename_axis(KEYS)


def outlier_ratio(spectrum: pd.DataFrame, density: pd.DataFrame, mass: float) -> pd.DataFrame:
    """Per run and step: lambda_max / the bulk edge (NaN where the edge is not positive)."""
    summary = spectrum_summary(spectrum).set_index(KEYS)
    edge = bulk_edge(density, mass).reindex(summary.index)
    ratio = summary["lambda_max"] / edge.where(edge > 0)
    return summary.assign(bulk_edge=edge, outlier_ratio=ratio).reset_index()


def density_curve(nodes: Sequence[float], weights: Sequence[float], grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i weight_i N(grid; node_i, sigma^2): the smoothed spectral density on `grid`."""
    nodes, weights = np.asarray(nodes, float)[:, None], np.asarray(weights, float)[:, None]
    kernel = np.exp(-0.5 * ((grid[None, :] - nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (weights * kernel).sum(axis=0)


def basin_radii(surface: pd.DataFrame, factor: float = 2.0) -> pd.DataFrame:
    """Per run and step: the distance from the checkpoint, along each of the four half-axes of the
    surface grid, at which the loss first reaches `factor` x its centre value (interpolated; the
    grid's edge if it never does), and their mean `radius`."""
    from math import isfinite

    labels = _labels(surface)
    # coordinates snapped to the grid: tables written before surface.grid put the centre at
    # exactly 0 hold it at ~1e-17
    surface = surface.assign(x=surface["x"].round(12) + 0.0, y=surface["y"].round(12) + 0.0)
    rows = []
    for key, group in surface.groupby(labels + ["step"], sort=True):
        centre = group[(group["x"] == 0) & (group["y"] == 0)]["loss"]
        if centre.empty or not isfinite(float(centre.iloc[0])):
            continue
        centre = float(centre.iloc[0])
        radii = []
        for axis, other in (("x", "y"), ("y", "x")):
            line = group[group[other] == 0].sort_values(axis)
            for sign in (1, -1):
                half = line[line[axis] * sign > 0].sort_values(axis, key=lambda c: c.abs())
                radii.append(_reach(list(half[axis].abs()), list(half["loss"]), centre, factor))
        rows.append({**dict(zip(labels + ["step"], key)), "radius": float(np.mean(radii))})
    return pd.DataFrame(rows, columns=labels + ["step", "radius"]).astype({"radius": float})


def _reach(distances: list[float], losses: list[float], centre: float, factor: float) -> float:
    target = factor * centre
    previous_t, previous_loss = 0.0, centre
    for t, loss in zip(distances, losses):
        if not math.isfinite(loss) or loss >= target:
            if not math.isfinite(loss) or loss == previous_loss:
                return t
            return previous_t + (t - previous_t) * (target - previous_loss) / (loss - previous_loss)
        previous_t, previous_loss = t, loss
    return distances[-1] if distances else float("nan")


def eos_ratios(spectrum: pd.DataFrame) -> pd.DataFrame:
    """Per run and step: ratio = lr x lambda_max and whether the run's ratio had reached 2 at or
    before this step (`after_crossing`)."""
    summary = spectrum_summary(spectrum).sort_values(["run", "step"])
    summary["ratio"] = summary["lr"] * summary["lambda_max"]
    crossed = summary["ratio"].ge(2.0).groupby(summary["run"]).cummax()
    return summary.assign(after_crossing=crossed)


def weight_norms(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run, layer and recorded step: ||w_t||^2, its prediction for a scale-invariant weight
    under plain SGD, ||w_0||^2 + lr^2 sum_{s<t} ||g_s||^2 (exact only if every step is recorded),
    the effective learning rate lr / ||w_t||^2 and |cos(w, g)|."""
    layers = layers.sort_values(["run", "layer", "step"])
    grouped = layers.groupby(["run", "layer"])
    w_sq = layers["weight_norm"].astype(float) ** 2
    grad_sq = layers["weight_grad_norm"].astype(float) ** 2
    first = grouped["weight_norm"].transform("first").astype(float) ** 2
    earlier = (layers["lr"] ** 2 * grad_sq).groupby([layers["run"], layers["layer"]]).cumsum() - layers["lr"] ** 2 * grad_sq
    return layers.assign(w_sq=w_sq, w_sq_predicted=first + earlier, effective_lr=layers["lr"] / w_sq,
                         grad_cos=layers["weight_grad_cos"].astype(float))
