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


def _modes(frame: pd.DataFrame) -> list[str]:
    """["bn_mode"] where a Hessian table has it: a study may analyse both modes, each its own rows."""
    return ["bn_mode"] if "bn_mode" in frame.columns else []


def spectrum_summary(spectrum: pd.DataFrame) -> pd.DataFrame:
    """Per run, step (and bn_mode): lambda_max (rank 1), lambda_min (rank -1), trace, trace_se, the
    gradient share in the top-k eigenvectors (k = the largest rank) and whether every search converged."""
    labels = _labels(spectrum) + _modes(spectrum)
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
    starts = density.groupby(KEYS + _modes(density))["start"].transform("nunique")
    return density.assign(weight=density["weight"] / starts)


def density_curve(nodes: Sequence[float], weights: Sequence[float], grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i weight_i N(grid; node_i, sigma^2): the smoothed spectral density on `grid`."""
    nodes, weights = np.asarray(nodes, float)[:, None], np.asarray(weights, float)[:, None]
    kernel = np.exp(-0.5 * ((grid[None, :] - nodes) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (weights * kernel).sum(axis=0)


def basin_radii(surface: pd.DataFrame, rise: float) -> pd.DataFrame:
    """Per run and step: the distance from the checkpoint, along each of the four half-axes of the
    surface grid, at which the loss first rises `rise` above its centre value (interpolated), and
    their mean `radius`. An absolute rise, not a multiple of the centre: a network whose centre
    loss is lower would otherwise get a smaller radius for the same walls. A half-axis on which
    the loss never rises that far counts as the grid's edge and the radius is `capped` (a lower
    bound: widen surface.span)."""
    from math import isfinite

    labels = _labels(surface)
    # coordinates snapped to the grid: tables written before surface.grid put the centre at
    # exactly 0 hold it at ~1e-17
    surface = surface.assign(x=surface["x"].round(12) + 0.0, y=surface["y"].round(12) + 0.0)
    rows = []
    for key, group in surface.groupby(labels + ["step"] + _modes(surface), sort=True):
        centre = group[(group["x"] == 0) & (group["y"] == 0)]["loss"]
        if centre.empty or not isfinite(float(centre.iloc[0])):
            continue
        centre = float(centre.iloc[0])
        radii, capped = [], False
        for axis, other in (("x", "y"), ("y", "x")):
            line = group[group[other] == 0].sort_values(axis)
            for sign in (1, -1):
                half = line[line[axis] * sign > 0].sort_values(axis, key=lambda c: c.abs())
                radius, edge = _reach(list(half[axis].abs()), list(half["loss"]), centre, centre + rise)
                radii.append(radius)
                capped |= edge
        rows.append({**dict(zip(labels + ["step"] + _modes(surface), key)), "radius": float(np.mean(radii)),
                     "capped": capped})
    columns = labels + ["step"] + _modes(surface) + ["radius", "capped"]
    return pd.DataFrame(rows, columns=columns).astype({"radius": float})


def _reach(distances: list[float], losses: list[float], centre: float, target: float) -> tuple[float, bool]:
    """(distance at which the loss first reaches `target`, interpolated; whether it never did, the
    grid's edge returned instead)."""
    previous_t, previous_loss = 0.0, centre
    for t, loss in zip(distances, losses):
        if not math.isfinite(loss) or loss >= target:
            if not math.isfinite(loss) or loss == previous_loss:
                return t, False
            return previous_t + (t - previous_t) * (target - previous_loss) / (loss - previous_loss), False
        previous_t, previous_loss = t, loss
    return (distances[-1], True) if distances else (float("nan"), False)


def as_bool(values: pd.Series) -> pd.Series:
    """A CSV boolean column (True/False, 1/0, true/false; missing = False) as bools."""
    return values.astype(str).str.lower().isin(["true", "1", "1.0"])


def outlier_groups(spectrum: pd.DataFrame, classes: int) -> pd.DataFrame:
    """Ghorbani et al.'s outliers, found by their separation from the bulk: per run, step (and
    bn_mode), among the largest eigenvalues (rank 1, 2, ...) the group 1..k whose last member
    stands furthest above the next one, k <= classes - 1 (with cross-entropy there are at most
    C - 1 outliers: the softmax is shift-invariant, so the logits' Hessian has rank C - 1).

    Only the leading eigenvalues whose search converged count (the first unconverged rank ends
    the list), and a gap needs a positive next eigenvalue. Columns: members (k), gap (lambda_k /
    lambda_k+1), gradient_share (of ||g||^2 in the span of the group's eigenvectors), searched
    (converged leading eigenvalues); gap NaN where fewer than two are known.
    """
    top = spectrum[spectrum["rank"] >= 1]
    keys = _labels(spectrum) + ["step"] + _modes(spectrum)
    rows = []
    for key, group in top.groupby(keys, sort=False):
        group = group.sort_values("rank")
        converged = as_bool(group["converged"]).to_numpy() & np.isfinite(group["eigenvalue"].to_numpy(dtype=float))
        known = len(converged) if converged.all() else int(np.argmin(converged))
        values = group["eigenvalue"].to_numpy(dtype=float)[:known]
        shares = group["gradient_share"].to_numpy(dtype=float)[:known]
        candidates = [k for k in range(1, min(classes - 1, known - 1) + 1) if values[k] > 0]
        gaps = [values[k - 1] / values[k] for k in candidates]
        best = int(np.argmax(gaps)) if gaps else None
        rows.append({**dict(zip(keys, key)), "searched": known,
                     "members": candidates[best] if gaps else np.nan,
                     "gap": gaps[best] if gaps else np.nan,
                     "gradient_share": shares[candidates[best] - 1] if gaps else np.nan})
    return pd.DataFrame(rows, columns=keys + ["searched", "members", "gap", "gradient_share"])


def eos_window(sharpness: pd.DataFrame, train: pd.DataFrame, loss_fraction: float) -> pd.DataFrame:
    """Cohen et al.'s edge of stability, per run and analysed step: ratio = lr x sharpness, and
    whether the step lies in the run's window, from the first step where the ratio reaches 2 by
    sharpening (a run whose ratio is >= 2 already at its first analysed step `starts_above`: that is
    no crossing, and such a run has no window) to the first step where the training loss (the
    loss gradient descent descends) falls below `loss_fraction` x its first value (the end of the
    run if it never does). Unconverged sharpness values are left out."""
    table = sharpness[as_bool(sharpness["converged"]) & sharpness["sharpness"].notna()]
    table = table.sort_values(["run", "step"]).assign(ratio=lambda t: t["lr"] * t["sharpness"])
    losses = train.dropna(subset=["loss"]).sort_values(["run", "step"])
    first_loss = losses.groupby("run")["loss"].transform("first")
    fitted = losses[losses["loss"] < loss_fraction * first_loss].groupby("run")["step"].min()
    pieces = []
    for run, rows in table.groupby("run", sort=False):
        starts_above = bool(rows["ratio"].iloc[0] >= 2.0)
        reached = rows.loc[rows["ratio"] >= 2.0, "step"]
        crossing = np.nan if starts_above or reached.empty else float(reached.iloc[0])
        end = float(fitted.get(run, np.inf))
        pieces.append(rows.assign(starts_above=starts_above, crossing=crossing, fitted_step=end,
                                  in_window=(rows["step"] >= crossing) & (rows["step"] <= end)))
    columns = list(table.columns) + ["starts_above", "crossing", "fitted_step", "in_window"]
    return pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=columns)


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
                         grad_cos=layers["weight_grad_cos"].astype(float),
                         grad_cos_p50=layers["weight_grad_cos_p50"].astype(float))
