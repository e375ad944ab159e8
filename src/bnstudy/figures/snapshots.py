"""Figures of one point of training per run or checkpoint: final accuracy against a setting, the
Hessian's spectral density, the 2-D loss surface, measures against depth or group size.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import matplotlib.transforms as mtransforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from .drawing import (  # noqa: E402
    AXIS_LABELS, Entry, GREY, axes_grid, has_values, label_axes, mark_no_data, in_order, draw_series, legend,
    limit_to_data, style_entries,
)
from .frames import Context, MIN_BAND_SEEDS, format_value  # noqa: E402
from .paper_frames import FinalAxes, final_x  # noqa: E402



def draw_final_points(ax: plt.Axes, points: pd.DataFrame, colour) -> None:
    """Means with t-interval bars, single seeds as small squares, diverged runs as x on the bottom edge."""
    means = points[points["style"] == "mean"].sort_values("x")
    bars = means.dropna(subset=["low", "high"])
    ax.plot(means["x"], means["y"], color=colour, linewidth=1.2, marker="o", markersize=4, gid="mean")
    if len(bars):
        ax.errorbar(bars["x"], bars["y"], yerr=[bars["y"] - bars["low"], bars["high"] - bars["y"]],
                    fmt="none", ecolor=colour, capsize=3, gid="ci")
    seeds = points[points["style"] == "seed"]
    ax.scatter(seeds["x"], seeds["y"], color=colour, s=12, alpha=0.8, marker="s", zorder=4, gid="seed-point")
    diverged = points[points["style"] == "diverged"]
    bottom_edge = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.scatter(diverged["x"], np.full(len(diverged), 0.03), marker="x", s=40, clip_on=False, zorder=5,
               color=colour, gid="diverged", transform=bottom_edge)


def final_figure(ctx: Context, data: pd.DataFrame, final: FinalAxes) -> plt.Figure:
    """A final metric against a run setting, one panel per other condition, per variant."""
    x = final_x(ctx, final.candidates)
    columns = in_order(data["column"])
    fig, axes = axes_grid(1, len(columns), sharex=False)
    for ax, column in zip(axes[0], columns):
        cell = data[data["column"] == column]
        for variant in ctx.ordered(cell["variant"]):
            draw_final_points(ax, cell[cell["variant"] == variant], ctx.palette[variant])
        if not has_values(cell):
            mark_no_data(ax)
        xs = sorted(cell["x"].dropna().unique())
        if final.log_x and xs and xs[0] > 0:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [format_value(v) for v in xs])
        label_axes(ax, column, AXIS_LABELS.get(x, x), final.ylabel)
    values = data[["y", "low", "high"]].to_numpy(dtype=float).ravel()
    limit_to_data(axes[0, 0], values[np.isfinite(values)], "linear", final.domain)
    entries: list[Entry] = []
    if data["low"].notna().any():
        entries.append((Line2D([], [], color=GREY, marker="o", markersize=4),
                        f"mean over seeds, bar: 95% t-interval (≥ {MIN_BAND_SEEDS} seeds)"))
    elif data["style"].eq("mean").any():
        entries.append((Line2D([], [], color=GREY, marker="o", markersize=4), "mean over seeds"))
    if data["style"].eq("seed").any():
        entries.append((Line2D([], [], color=GREY, marker="s", markersize=3, linestyle=""),
                        f"one seed (< {MIN_BAND_SEEDS} seeds completed there: no bar)"))
    if data["style"].eq("diverged").any():
        entries.append((Line2D([], [], color=GREY, marker="x", linestyle=""),
                        "diverged run (no final value), on the bottom edge"))
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def density_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: analysed steps; columns: conditions; each panel the smoothed spectral density per
    variant on a log scale (outliers show as isolated bumps far right of the bulk)."""
    rows, columns = in_order(data["row"]), in_order(data["column"])
    fig, axes = axes_grid(len(rows), len(columns), sharex=False, sharey=False)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            cell = data[(data["row"] == row) & (data["column"] == column)].dropna(subset=["style"])
            ax.set_yscale("log")
            for variant in ctx.ordered(cell["variant"]):
                line = cell[cell["variant"] == variant]
                ax.plot(line["x"], line["y"].clip(lower=1e-12), color=ctx.palette[variant], linewidth=1.2,
                        gid="density")
            if cell.empty:
                mark_no_data(ax)
            else:
                ax.set_ylim(1e-8, max(10.0, float(cell["y"].max()) * 3))
            label_axes(ax, f"{row} · {column}" if column else row, "Hessian eigenvalue", "spectral density")
    entries = [(Line2D([], [], color=GREY, linewidth=1.2),
                "density: stochastic Lanczos quadrature, Gaussian-smoothed, mean over seeds")]
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def surface_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: analysed steps (contours of log10 loss over the plane of two filter-normalised
    directions, one seed), then the basin radius against step; columns: variant x condition."""
    contours = data[data["style"] == "contour"]
    steps, columns = in_order(contours["row"]), in_order(contours["column"])
    radius = data[data["row"] == "basin radius"]
    fig, axes = axes_grid(len(steps) + 1, max(len(columns), 1), sharex=False, sharey=False)
    levels = None
    finite = np.log10(contours["loss"].where(contours["loss"] > 0)).dropna()
    if len(finite):
        levels = np.linspace(float(finite.min()), float(np.quantile(finite, 0.98)), 15)
    for i, row in enumerate(steps):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            cell = contours[(contours["row"] == row) & (contours["column"] == column)]
            if cell.empty or levels is None:
                mark_no_data(ax)
            else:
                table = cell.pivot_table(index="y", columns="x", values="loss")
                z = np.log10(table.to_numpy(dtype=float).clip(min=1e-12))
                ax.contourf(table.columns, table.index, np.minimum(z, levels[-1]), levels=levels, cmap="viridis")
                ax.contour(table.columns, table.index, z, levels=levels, colors="white", linewidths=0.3)
                ax.plot([0], [0], marker="+", color="red", markersize=8, gid="centre")
                ax.set_aspect("equal")
            label_axes(ax, f"{row} · {column}", "direction 1", "direction 2")
    for j in range(max(len(columns), 1)):
        ax = axes[len(steps), j]
        if j:
            ax.set_visible(False)
            continue
        for column in in_order(radius["column"]):
            for variant in ctx.ordered(radius["variant"]):
                draw_series(ax, radius[(radius["column"] == column) & (radius["variant"] == variant)]
                            .dropna(subset=["style"]), ctx.palette[variant])
        if not has_values(radius.dropna(subset=["style"])):
            mark_no_data(ax)
        label_axes(ax, "basin radius (loss reaches 2x its centre value)", "step", "distance")
    entries = [(Patch(color=plt.get_cmap("viridis")(0.5)), "log10 loss, lowest seed; + the checkpoint")]
    entries += style_entries(radius)
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def axis_figure(ctx: Context, data: pd.DataFrame, xlabel: str, x: str = "layer", log_x: int | None = None) -> plt.Figure:
    """Curves against something other than the step (a layer's depth, a group size): rows =
    measures, columns = steps and conditions, hue = variant; `log_x`: the base of a log x axis."""
    rows, columns = in_order(data["row"]), in_order(data["column"])
    fig, axes = axes_grid(len(rows), len(columns), sharey="row")
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            cell = data[(data["row"] == row) & (data["column"] == column)]
            scales = cell["scale"].dropna()
            ax.set_yscale(scales.iloc[0] if len(scales) else "linear")
            if log_x:
                ax.set_xscale("log", base=log_x)
            drawable = cell.dropna(subset=["style"])
            for variant in ctx.ordered(drawable["variant"]):
                draw_series(ax, drawable[drawable["variant"] == variant], ctx.palette[variant], x=x)
            if not has_values(drawable):
                mark_no_data(ax)
            label_axes(ax, column, xlabel, row)
    legend(fig, ctx, data["variant"].dropna(), style_entries(data))
    return fig
