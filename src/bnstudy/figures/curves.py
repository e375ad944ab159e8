"""Figures over training steps: curves (a row of panels per measure), single units' activation
distributions, the loss landscape along the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..config.catalog import FIGURE_KINDS  # noqa: E402
from .drawing import (  # noqa: E402
    Entry, GREY, SideBySide, axes_grid, label_axes, mark_no_data, in_order, legend, panels_figure, style_entries,
)
from .frames import Context, Measure  # noqa: E402


# ---------------------------------------------------------------------------------------------
# figure kinds


def window_entries(ctx: Context) -> list[Entry]:
    if not FIGURE_KINDS[ctx.kind].windows:
        return []
    return [(Line2D([], [], color=GREY, linestyle="--", linewidth=0.8),
             f"step {ctx.early_end:g}: the claims' early window ends, the late one begins"
             " (claim_rules.early_fraction of the run)")]


def curves_figure(ctx: Context, data: pd.DataFrame, measures: Sequence[Measure]) -> plt.Figure:
    """Rows: ``measures``; columns: conditions (x layer); x: step; hue: variant."""
    fig = panels_figure(ctx, data, domains={m.label: m.domain for m in measures},
                        windows=FIGURE_KINDS[ctx.kind].windows)
    entries = style_entries(data) + window_entries(ctx)
    if data["style"].eq("prediction").any():
        entries.append((Line2D([], [], color=GREY, linewidth=1.4, linestyle=":"),
                        "prediction for a scale-invariant weight: ‖w₀‖² + lr² Σ‖g‖² (plain SGD)"))
    if data["style"].eq("reference").any():
        entries.append((Line2D([], [], color="0.1", linewidth=1.0, linestyle=":"),
                        "2 / lr (in lr × sharpness: 2): where GD on a quadratic diverges"))
    if data["style"].isin(["points", "window-points"]).any():
        entries.append((Line2D([], [], marker="o", markersize=3, color=GREY, linestyle=""),
                        "every analysed step; filled: the claim's window (see caption)"))
    eigen_table = FIGURE_KINDS[ctx.kind].eigen_table
    if eigen_table:
        table = ctx.tables[eigen_table]
        total = table.groupby(["run", "step", *(["bn_mode"] if "bn_mode" in table else [])]).ngroups
        flagged = len(data.loc[data["style"].eq("unconverged"), ["series", "step", "column"]].drop_duplicates())
        if flagged:
            marker = Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor=GREY, linestyle="")
            entries.append((marker, f"eigenvalues whose Lanczos search did not converge: {flagged} of "
                                    f"{total} checkpoints"))
        else:
            entries.append((Line2D([], [], linestyle=""), f"Lanczos converged at all {total} checkpoints"))
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def unit_shades(colour, n: int) -> list[tuple]:
    """``n`` distinguishable shades of a variant's colour, dark to light, one per unit."""
    if n <= 1:
        return [tuple(colour)]
    base = np.asarray(colour, dtype=float)
    return [tuple(base + abs(t) * ((np.zeros(3) if t < 0 else np.ones(3)) - base))
            for t in np.linspace(-0.55, 0.35, n)]


def draw_units(ax: plt.Axes, cell: pd.DataFrame, colour) -> None:
    """Per unit: the p15-p85 band and the median over steps, in shades of the variant's colour."""
    units = sorted(cell["unit"].astype(int).unique())
    for unit, shade in zip(units, unit_shades(colour, len(units))):
        line = cell[cell["unit"] == unit].sort_values("step")
        ax.fill_between(line["step"], line["p15"], line["p85"], color=shade, alpha=0.12, linewidth=0,
                        gid="unit-band")
        for edge in ("p15", "p85"):
            ax.plot(line["step"], line[edge], color=shade, linewidth=0.5, alpha=0.9)
        ax.plot(line["step"], line["p50"], color=shade, linewidth=1.2, gid="unit-median")
        if line["status"].eq("diverged").any():
            ax.scatter(line["step"].iloc[-1:], line["p50"].iloc[-1:], marker="x", s=30, color=shade, zorder=5,
                       gid="diverged")


def _units_title(column: str, cell: pd.DataFrame) -> str:
    """The panel's variant and condition, then the seed and the units it shows."""
    if cell.empty:
        return column
    units = ", ".join(str(u) for u in sorted(cell["unit"].astype(int).unique()))
    plural = "s" if "," in units else ""
    return f"{column}\nseed {int(cell['seed'].iloc[0])} · unit{plural} {units}"


def units_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: layers; columns: variant x condition; each panel one seed's single units. Each panel
    has its own y axis: the band width sets the scale, and the eye compares the step-to-step
    jitter of the lines, which one wide panel in a shared row would flatten."""
    rows, columns = in_order(data["row"]), in_order(data["column"])
    fig, axes = axes_grid(len(rows), len(columns), sharey=False)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            panel = data[(data["row"] == row) & (data["column"] == column)]
            cell = panel.dropna(subset=["p50"])
            if cell.empty:
                mark_no_data(ax)
            else:
                draw_units(ax, cell, ctx.palette[panel["variant"].iloc[0]])
            label_axes(ax, _units_title(column, cell), "step", f"{row}\nunit input p15 / p50 / p85")
    entries: list[Entry] = [((Patch(color=GREY, alpha=0.12), Line2D([], [], color=GREY, linewidth=1.2)),
                             "one unit: median and 15th–85th percentile over batch and spatial positions")]
    most = int(data.groupby(["row", "column"])["unit"].nunique().max()) if data["unit"].notna().any() else 0
    if most > 1:  # layers of different widths record different unit indices: the titles name them
        shades = SideBySide(Line2D([], [], color=shade, linewidth=3)
                            for shade in unit_shades((0.45, 0.45, 0.45), most))
        entries.append((shades, "the panel's units, in its title's order (dark to light)"))
    if data["status"].eq("diverged").any():
        entries.append((Line2D([], [], color=GREY, marker="x", linestyle=""), "diverged run: its last recorded step"))
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def landscape_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: conditions; columns: (a) loss range, (b) gradient predictiveness, (c) beta-smoothness."""
    fig = panels_figure(ctx, data, sharey="col", measures_in_columns=True, windows=True)
    legend(fig, ctx, data["variant"].dropna(), style_entries(data) + window_entries(ctx))
    return fig
