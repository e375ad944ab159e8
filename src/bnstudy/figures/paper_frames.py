"""The frames of the paper's figure kinds: accuracy and loss curves, moment changes, ICS and
curvature over steps, single units' distributions, the loss landscape, final accuracy against a
setting (pure pandas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..tables import derived
from ..files import TableError
from .frames import (
    ACCURACY, Context, EVAL_MODE, MAX_UNITS, MIN_BAND_SEEDS, Measure, SIGNED_UNIT, TRAIN_MODE,
    panel_stub, curve_series, curves_data, finite_rows, resolve_scale, seed_summary, split_runs,
    with_conditions,
)


ACCURACY_ROWS = {
    "train_batches": Measure(f"train accuracy\n({TRAIN_MODE})", "eval", "accuracy",
                             ("split", "train_batches"), domain=ACCURACY),
    "train": Measure(f"train accuracy\n({EVAL_MODE})", "eval", "accuracy", ("split", "train"), domain=ACCURACY),
    "test": Measure(f"test accuracy\n({EVAL_MODE})", "eval", "accuracy", ("split", "test"), domain=ACCURACY),
}

TRAIN_LOSS_ROWS = [Measure("training loss", "train", "loss", scale="log")]
MOMENT_ROWS = [Measure("|μ(t+1) − μ(t)|\nmean over units", "layers", "unit_mean_change", scale="log"),
               Measure("|σ²(t+1) − σ²(t)|\nmean over units", "layers", "unit_var_change", scale="log")]
ICS_ROWS = [Measure("‖G − G′‖₂", "ics", "l2_diff", scale="log"),
            Measure("‖G − G′‖₂ / ‖G‖₂\n(scale-free)", "ics", "l2_diff", scale="log", divide_by="grad_norm"),
            Measure("cos(G, G′)", "ics", "cosine", domain=SIGNED_UNIT)]
CURVATURE_ROWS = [Measure("gᵀHg / ‖g‖²", "curvature", "grad_quadratic", scale="auto"),
                  Measure("largest Hessian\neigenvalue", "curvature", "top_eigenvalue", scale="auto"),
                  Measure("smallest Hessian\neigenvalue", "curvature", "bottom_eigenvalue", scale="auto")]
EIGENVALUE_ROWS = {"top_eigenvalue": CURVATURE_ROWS[1].label, "bottom_eigenvalue": CURVATURE_ROWS[2].label}


as_bool = derived.as_bool


def unconverged_points(ctx: Context) -> pd.DataFrame:
    """Each run's eigenvalue points whose Lanczos search did not converge (flagged, kept in the mean)."""
    curvature, conditions = with_conditions(ctx.tables["curvature"], ["lr", *ctx.grid])
    flagged = curvature[~as_bool(curvature["converged"])]
    return pd.concat([pd.DataFrame({"row": row, "column": flagged["condition"], "variant": flagged["variant"],
                                    "series": flagged["run"], "style": "unconverged", "step": flagged["step"],
                                    "y": flagged[column].astype(float)})
                      for column, row in EIGENVALUE_ROWS.items()], ignore_index=True)


def curvature_data(ctx: Context) -> pd.DataFrame:
    """The curvature curves plus one "unconverged" point per flagged eigenvalue."""
    data = curves_data(ctx, CURVATURE_ROWS)
    flagged = unconverged_points(ctx)
    scales = data.groupby("row")["scale"].first()
    flagged = flagged.assign(scale=flagged["row"].map(lambda row: scales.get(row, "linear")))
    return pd.concat([data, flagged], ignore_index=True) if len(flagged) else data


def choose_units(units: Sequence[int], count: int = MAX_UNITS) -> list[int]:
    """Up to ``count`` evenly spaced units of those recorded (the first one always among them)."""
    units = sorted(int(u) for u in units)
    if count <= 1:
        return units[:count]
    if len(units) <= count:
        return units
    return [units[round(i * (len(units) - 1) / (count - 1))] for i in range(count)]


def units_data(ctx: Context, last_layer_first_unit: bool = False) -> pd.DataFrame:
    """Single units' percentiles over steps, for ONE seed (the lowest) of each variant x condition.

    Rows of the figure are the configured layers (or, for Ioffe & Szegedy's Fig. 1b-c, only the
    last layer's first recorded unit); averaging over seeds or units would smooth away the
    per-step, per-unit noise these figures are about.
    """
    units, conditions = with_conditions(ctx.tables["units"], ["lr", *ctx.grid])
    if last_layer_first_unit:
        layers = [int(units["layer"].max())] if len(units) else []
    else:
        layers = ctx.layers(units)
    pieces = []
    for layer in layers or [None]:
        row = "no layers" if layer is None else ctx.layer_label(layer)
        for condition in conditions:
            for variant in ctx.variants:
                column = " · ".join(p for p in (variant, condition) if p)
                cell = units[(units["layer"] == layer) & (units["variant"] == variant)
                             & (units["condition"] == condition)]
                if cell.empty:
                    pieces.append(pd.DataFrame({"row": [row], "column": [column], "variant": [variant]}))
                    continue
                seed = cell["seed"].min()
                cell = cell[cell["seed"] == seed]
                chosen = choose_units(cell["unit"].unique(), 1 if last_layer_first_unit else MAX_UNITS)
                cell = cell[cell["unit"].isin(chosen)].sort_values(["unit", "step"])
                pieces.append(cell.assign(row=row, column=column))
    keep = ["row", "column", "variant", "condition", "run", "seed", "status", "layer", "unit", "step",
            "p15", "p50", "p85"]
    return pd.concat(pieces, ignore_index=True).reindex(columns=keep)


def landscape_summary(landscape: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    """Per run and step, over the step sizes eta along the gradient (section 3.2): the loss
    range, the gradient-difference range and the effective beta-smoothness (max of beta)."""
    along_gradient = landscape[landscape["direction"] == "gradient"]
    keys = ["run", "variant", "lr", "seed", "status", *grid, "step"]
    return along_gradient.groupby(keys, dropna=False, as_index=False).agg(
        loss_min=("loss", "min"), loss_max=("loss", "max"),
        grad_diff_min=("grad_diff", "min"), grad_diff_max=("grad_diff", "max"),
        beta_max=("beta", "max"),
    )


LANDSCAPE_MEASURES = [  # (low column or None, high column, label, scale)
    ("loss_min", "loss_max", "loss range over η", "auto"),
    ("grad_diff_min", "grad_diff_max", "‖g − ∇L(W − ηg)‖₂ range over η", "log"),
    (None, "beta_max", "effective β-smoothness\n(max over η)", "log"),
]


def range_band(frame: pd.DataFrame, low: str, high: str, log: bool = False) -> pd.DataFrame:
    """Per step: the seed-mean of each run's minimum and maximum over eta (the paper's band),
    geometric on a log axis (an arithmetic mean would let one seed's 1e13 set the band); a
    diverged run gets its own band, so the mean is over one set of seeds throughout."""
    pieces = []
    completed, diverged = split_runs(frame.dropna(subset=[high]))
    if log:  # a non-positive edge has no logarithm: such points are left out of the mean
        completed = completed[(completed[low] > 0) & (completed[high] > 0)]
    if len(completed):
        if log:
            logs = completed.assign(**{c: np.log10(completed[c].astype(float)) for c in (low, high)})
            means = logs.groupby("step", as_index=False)[[low, high]].mean()
            means[[low, high]] = 10.0 ** means[[low, high]]
        else:
            means = completed.groupby("step", as_index=False)[[low, high]].mean()
        pieces.append(pd.DataFrame({"series": "mean", "style": "range", "step": means["step"],
                                    "y": np.nan, "low": means[low], "high": means[high],
                                    "n": completed["run"].nunique()}))
    for run, rows in diverged.groupby("run", sort=True):
        rows = rows.sort_values("step")
        pieces.append(pd.DataFrame({"series": run, "style": "diverged", "step": rows["step"], "y": rows[high],
                                    "low": rows[low], "high": rows[high], "n": 1}))
    return pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=["series", "style", "step"])


def landscape_data(ctx: Context) -> pd.DataFrame:
    """Rows = conditions, columns = (a) loss range, (b) gradient predictiveness, (c) beta."""
    summary, conditions = with_conditions(landscape_summary(ctx.tables["landscape"], ctx.grid), ["lr", *ctx.grid])
    pieces = []
    for low, high, label, scale in LANDSCAPE_MEASURES:
        scale = resolve_scale(summary[high], scale)
        for condition in conditions:
            cell = summary[summary["condition"] == condition]
            pieces.append(panel_stub(condition, label, scale))
            for variant in ctx.ordered(cell["variant"]):
                rows = cell[cell["variant"] == variant]
                series = (curve_series(rows, y=high, log=scale == "log") if low is None
                          else range_band(rows, low, high, log=scale == "log"))
                pieces.append(series.assign(row=condition, column=label, variant=variant, scale=scale))
    return pd.concat(pieces, ignore_index=True)


@dataclass(frozen=True)
class FinalAxes:
    """What a final-metric figure plots: ``which`` value of a runs.csv row (``test`` accuracy or the
    train − test ``gap``) against the first of ``candidates`` that the study varies."""

    candidates: tuple[str, ...]
    ylabel: str
    which: str = "test"
    domain: tuple[float, float] = ACCURACY
    log_x: bool = False


def final_value(runs: pd.DataFrame, which: str) -> pd.Series:
    """Final eval-mode test accuracy, or the generalisation gap (eval-mode train - test accuracy)."""
    if which == "gap":
        return runs["final_train_accuracy"] - runs["final_test_accuracy"]
    return runs["final_test_accuracy"]


def final_x(ctx: Context, candidates: Sequence[str]) -> str:
    """The setting on the x axis: the first candidate the study varies (lr always exists)."""
    for column in candidates:
        if column in ctx.runs.columns and (column == "lr" or column in ctx.grid):
            return column
    raise TableError(f"{ctx.tables.paths['runs']}: figure {ctx.kind!r} plots against {' or '.join(candidates)}, "
                     f"which study {ctx.study!r} does not vary (add it to the study's grid)")


def final_points(cell: pd.DataFrame, x: str, domain: tuple[float, float]) -> pd.DataFrame:
    """Per x: the mean over completed seeds with its t interval (where >= MIN_BAND_SEEDS seeds),
    each seed's own point where fewer, and an edge marker per diverged run (it has no final value)."""
    completed, diverged = split_runs(cell)
    summary = seed_summary(completed, x=x, y="value", domain=domain).assign(series="mean", style="mean")
    few = summary.loc[summary["n"] < MIN_BAND_SEEDS, x]
    seeds = finite_rows(completed[completed[x].isin(few)], "value", False)
    pieces = [summary,
              pd.DataFrame({"series": seeds["run"], "style": "seed", x: seeds[x], "y": seeds["value"]}),
              pd.DataFrame({"series": diverged["run"], "style": "diverged", x: diverged[x], "y": np.nan})]
    pieces = [p for p in pieces if len(p)]
    return pd.concat(pieces, ignore_index=True) if pieces else summary


def final_data(ctx: Context, final: FinalAxes) -> pd.DataFrame:
    """A final metric (runs.csv) against a run setting; columns = the other conditions."""
    x = final_x(ctx, final.candidates)
    runs = ctx.runs.assign(value=lambda r: final_value(r, final.which))
    runs, conditions = with_conditions(runs, [c for c in ["lr", *ctx.grid] if c != x])
    pieces = []
    for condition in conditions:
        cell = runs[runs["condition"] == condition]
        pieces.append(panel_stub("", condition, "linear"))
        for variant in ctx.ordered(cell["variant"]):
            points = final_points(cell[cell["variant"] == variant], x, final.domain)
            pieces.append(points.assign(row="", column=condition, variant=variant, x=points[x]))
    columns = ["row", "column", "variant", "series", "style", "x", "y", "low", "high", "n"]
    return pd.concat(pieces, ignore_index=True).reindex(columns=columns)
