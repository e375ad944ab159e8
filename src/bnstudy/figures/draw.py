"""Study tables -> figures (PNG + PDF), one drawer per figure kind of `bnstudy.config.catalog`.

The workflow's figures job of a study calls ``draw_study``: every figure kind the study lists,
each from the study tables ``catalog.figure_tables(kind)`` names, into the study's figures folder.
Nothing here imports torch, so figures can be redrawn on a machine without the training stack.

Every kind is two layers: pandas functions in `bnstudy.figures.data` that return what the panels
plot (a tidy frame; ``figure_data`` gives it, the tests assert on it), and the drawing code here,
which only draws such a frame.

Conventions shared by every figure, so that they read alike:

* seeds are the experimental unit. A curve is the mean over the seeds that did not diverge, with
  its 95% Student-t band (`bnstudy.tables.stats.mean_ci`, the claims table's interval) at the steps where
  at least ``MIN_BAND_SEEDS`` seeds give a value. A variant with fewer completed seeds in a panel
  gets each seed's own line instead (a t band over 2 seeds is 12.7 standard errors wide). Bands are clipped to the measure's domain
  (accuracies to [0, 1]); on log axes mean and band are taken over log10 values (a geometric mean);
* activation distributions are of single units of one seed: Algorithm 1 draws its noise per unit
  and per step, and pooling units or averaging seeds would average that noise away;
* hue is the variant, with one fixed colour per variant across all figures;
* panel columns are the run conditions (lr and the study's grid values), so runs that differ in
  anything but the seed are never averaged together;
* a diverged run is drawn as its own dashed line up to its last finite point, marked there with
  an ``x`` and counted in the legend; a panel with nothing to draw says "no data".
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import matplotlib.transforms as mtransforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..atomic import atomic_write  # noqa: E402
from ..config.catalog import FIGURE_KINDS, figure_tables  # noqa: E402
from .data import (  # noqa: E402
    CURVES, EVAL_MODE, FINAL, MIN_BAND_SEEDS, ROWS_OF, TRAIN_MODE, Context, curvature_data, curves_data,
    density_data, eos_data, final_data, final_x, format_value, group_size_data, landscape_data,
    layer_measures_data, spectrum_data, surface_data, units_data, weight_norm_data,
)
from ..tables.files import StudyTables, TableError  # noqa: E402

# Index into seaborn's colour-blind palette per variant, fixed so a variant looks the same in every
# figure; the lp variants avoid the hues of batchnorm/standard they are compared with.
VARIANT_COLOURS = {"standard": 0, "batchnorm": 1, "noisy_batchnorm": 2, "standard_noise": 3,
                   "l1": 4, "l2": 7, "linf": 8}
AXIS_LABELS = {"lr": "learning rate", "init_scale": "initial weight scale (x Glorot)",
               "dropout": "dropout rate"}
PANEL_WIDTH, PANEL_HEIGHT, MIN_WIDTH, DPI = 3.4, 2.5, 6.0, 150
NO_DATA = "no data"


class Styled(Context):
    """A Context with the figures' fixed colours."""

    @cached_property
    def palette(self) -> dict[str, tuple]:
        """A fixed colour per variant across all figures (standard is always the same blue)."""
        base = sns.color_palette("colorblind", 10)
        palette = {name: base[index] for name, index in VARIANT_COLOURS.items()}
        others = [v for v in self.variants if v not in palette]
        return palette | dict(zip(others, sns.color_palette("husl", len(others))))

# ---------------------------------------------------------------------------------------------
# drawing


def _grid(n_rows: int, n_cols: int, sharex: str | bool = True, sharey: str | bool = "row"):
    """A constrained-layout grid of panels, PANEL_WIDTH x PANEL_HEIGHT each plus room for the legend."""
    width = max(PANEL_WIDTH * max(n_cols, 1) + 1.0, MIN_WIDTH)
    return plt.subplots(max(n_rows, 1), max(n_cols, 1), squeeze=False, sharex=sharex, sharey=sharey,
                        layout="constrained", figsize=(width, PANEL_HEIGHT * max(n_rows, 1) + 1.2))


def _no_data(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _label(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title on every panel; x label on the bottom row, y label on the first column."""
    ax.set_title(title, fontsize=8)
    spec = ax.get_subplotspec()
    ax.set_xlabel(xlabel if spec.is_last_row() else "")
    ax.set_ylabel(ylabel if spec.is_first_col() else "")


def _order(values: pd.Series) -> list[str]:
    return list(dict.fromkeys(values.dropna()))


def draw_series(ax: plt.Axes, series: pd.DataFrame, colour, x: str = "step") -> None:
    """Draw one variant's `curve_series` / `range_band` / unconverged-point rows in one panel."""
    for (_, style), line in series.groupby(["series", "style"], sort=False):
        line = line.sort_values(x)
        xs, ys = line[x].to_numpy(dtype=float), line["y"].to_numpy(dtype=float)
        if style in ("mean", "range"):
            low, high = line["low"].to_numpy(dtype=float), line["high"].to_numpy(dtype=float)
            band = np.isfinite(low) & np.isfinite(high)
            if band.any():
                ax.fill_between(xs, low, high, where=band, color=colour, alpha=0.25 if style == "mean" else 0.3,
                                linewidth=0, gid="band" if style == "mean" else "range")
            if style == "range":
                for edge in (low, high):
                    ax.plot(xs, edge, color=colour, linewidth=0.6, alpha=0.8)
            else:
                ax.plot(xs, ys, color=colour, linewidth=1.6, gid="mean")
        elif style == "seed":
            ax.plot(xs, ys, color=colour, linewidth=0.9, alpha=0.85, gid="seed-line")
        elif style == "diverged":
            ax.plot(xs, ys, color=colour, linewidth=0.8, linestyle="--", alpha=0.9, gid="diverged-line")
            finite = np.isfinite(ys)
            if finite.any():
                ax.scatter(xs[finite][-1:], ys[finite][-1:], marker="x", s=30, color=colour, zorder=5,
                           gid="diverged")
        elif style == "unconverged":
            ax.scatter(xs, ys, marker="o", s=28, facecolors="none", edgecolors=colour, linewidths=1.1,
                       zorder=6, gid="unconverged")
        elif style == "reference":
            ax.plot(xs, ys, color="0.1", linewidth=1.0, linestyle=":", gid="reference")
        elif style in ("points", "window-points"):  # every analysed point; filled: inside the claim's window
            ax.scatter(xs, ys, s=9, color=colour if style == "window-points" else "none", edgecolors=colour,
                       linewidths=0.6, zorder=4, gid=style)
        elif style == "prediction":
            ax.plot(xs, ys, color=colour, linewidth=1.4, linestyle=":", gid="prediction")


def plotted_values(data: pd.DataFrame) -> np.ndarray:
    """The values a y axis must show: lines and the seeds' own range, and the landscape's range
    bands, but not t bands (with few seeds one can span many decades and flatten every curve)."""
    columns = [data.get(c) for c in ("y", "seed_min", "seed_max") if c in data]
    if "style" in data:
        ranges = data["style"].eq("range")
        columns += [data.loc[ranges, c] for c in ("low", "high") if c in data]
    values = [pd.to_numeric(c, errors="coerce").to_numpy(dtype=float) for c in columns]
    values = np.concatenate(values) if values else np.array([])
    return values[np.isfinite(values)]


def limit_to_data(ax: plt.Axes, values: np.ndarray, scale: str, domain: tuple | None = None) -> None:
    """Fit the y axis to ``values`` (padded), within the measure's domain; a band beyond is clipped."""
    if scale == "log":
        values = np.log10(values[values > 0])
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    pad = 0.06 * (high - low) or (0.5 if scale == "log" else 0.05 * (abs(high) or 1.0))
    low, high = low - pad, high + pad
    if scale == "log":
        ax.set_ylim(10 ** low, 10 ** high)
        return
    if domain is not None:
        margin = 0.03 * (domain[1] - domain[0])
        low, high = max(low, domain[0] - margin), min(high, domain[1] + margin)
    ax.set_ylim(low, high)


def panels_figure(ctx: Context, data: pd.DataFrame, sharey: str | bool = "row",
                  domains: Mapping[str, tuple] | None = None, measures_in_columns: bool = False,
                  windows: bool = False) -> plt.Figure:
    """The drawing shared by the curves-over-steps figures: one panel per (row, column) of
    ``data``, one colour per variant, "no data" where a panel has nothing.

    Rows are measures and columns conditions (titles), unless ``measures_in_columns`` (the
    landscape: rows are conditions, every panel's y label names its column's measure). With
    ``windows``, a dashed line marks where the claims' early window ends and the late one begins.
    """
    rows, columns = _order(data["row"]), _order(data["column"])
    fig, axes = _grid(len(rows), len(columns), sharey=sharey)
    domains = domains or {}
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            cell = data[(data["row"] == row) & (data["column"] == column)]
            scales = cell["scale"].dropna() if "scale" in cell else pd.Series(dtype=str)
            scale = scales.iloc[0] if len(scales) else "linear"
            ax.set_yscale(scale)
            drawable = cell.dropna(subset=["style"])
            for variant in ctx.ordered(drawable["variant"]):
                draw_series(ax, drawable[drawable["variant"] == variant], ctx.palette[variant])
            draw_series(ax, drawable[drawable["style"] == "reference"], "0.1")  # e.g. 2 / lr
            if windows:
                ax.axvline(ctx.early_end, color=GREY, linestyle="--", linewidth=0.8, gid="early-window")
            if not _has_values(drawable):
                _no_data(ax)
            measure = column if measures_in_columns else row
            _label(ax, row if measures_in_columns else column, "step", measure)
            if measures_in_columns:  # every column is its own measure: label each panel
                ax.set_ylabel(measure)
            first = {"row": j == 0, "col": i == 0}.get(sharey, True)
            if first:
                scope = {"row": data[data["row"] == row], "col": data[data["column"] == column]}.get(sharey, cell)
                limit_to_data(ax, plotted_values(scope.dropna(subset=["style"])), scale, domains.get(measure))
    return fig


def _has_values(frame: pd.DataFrame) -> bool:
    if frame.empty:
        return False
    values = frame.reindex(columns=["y", "low", "high"]).to_numpy(dtype=float)
    return bool(np.isfinite(values).any())


GREY = "0.35"
Entry = tuple[object, str]   # (legend handle, label); a tuple handle overlays its parts


class SideBySide(tuple):
    """A legend handle whose parts are drawn next to each other (the units' shades)."""


def style_entries(data: pd.DataFrame) -> list[Entry]:
    """Legend entries saying what the line styles present in ``data`` mean."""
    styles = set(data["style"].dropna()) if "style" in data else set()
    entries: list[Entry] = []
    if "mean" in styles:
        line = Line2D([], [], color=GREY, linewidth=1.6)
        if data.loc[data["style"] == "mean", "low"].notna().any():
            entries.append(((Patch(color=GREY, alpha=0.25), line),
                            f"mean over seeds, band: 95% t-interval (≥ {MIN_BAND_SEEDS} seeds)"))
        else:
            entries.append((line, "mean over seeds"))
    if "seed" in styles:
        entries.append((Line2D([], [], color=GREY, linewidth=0.9), f"one seed (< {MIN_BAND_SEEDS} seeds: no band)"))
    if "range" in styles:
        entries.append((Patch(color=GREY, alpha=0.3), "range over η, mean over seeds"))
    if "diverged" in styles:
        entries.append((Line2D([], [], color=GREY, linewidth=0.8, linestyle="--", marker="x"),
                        "diverged run (x: its last finite value)"))
    return entries


def legend(fig: plt.Figure, ctx: Context, variants: Sequence[str], entries: Sequence[Entry] = ()) -> None:
    """One legend per figure: the variants with their divergence counts, then ``entries``."""
    items: list[Entry] = []
    for variant in ctx.ordered(variants):
        n_diverged, n_runs = ctx.diverged_counts.get(variant, (0, 0))
        suffix = f" ({n_diverged}/{n_runs} runs diverged)" if n_diverged else ""
        items.append((Line2D([], [], color=ctx.palette[variant], linewidth=2), variant + suffix))
    items += list(entries)
    columns = max(1, min(len(items), int(fig.get_figwidth() // 3.3)))  # ~3.3 inches a long entry
    fig.legend([h for h, _ in items], [label for _, label in items], loc="outside lower center",
               ncol=columns, frameon=False, fontsize=7, handler_map={SideBySide: HandlerTuple(ndivide=None)})


# ---------------------------------------------------------------------------------------------
# figure kinds


def window_entries(ctx: Context) -> list[Entry]:
    if not FIGURE_KINDS[ctx.kind].windows:
        return []
    return [(Line2D([], [], color=GREY, linestyle="--", linewidth=0.8),
             f"step {ctx.early_end:g}: the claims' early window ends, the late one begins"
             " (claim_rules.early_fraction of the run)")]


def curves_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: measures; columns: conditions (x layer); x: step; hue: variant."""
    measures = CURVES[ctx.kind][0] if ctx.kind in CURVES else ROWS_OF[ctx.kind]
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
    rows, columns = _order(data["row"]), _order(data["column"])
    fig, axes = _grid(len(rows), len(columns), sharey=False)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            panel = data[(data["row"] == row) & (data["column"] == column)]
            cell = panel.dropna(subset=["p50"])
            if cell.empty:
                _no_data(ax)
            else:
                draw_units(ax, cell, ctx.palette[panel["variant"].iloc[0]])
            _label(ax, _units_title(column, cell), "step", f"{row}\nunit input p15 / p50 / p85")
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


def final_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """A final metric against a run setting, one panel per other condition, per variant."""
    candidates, ylabel, _, domain, log_x = FINAL[ctx.kind]
    x = final_x(ctx, candidates)
    columns = _order(data["column"])
    fig, axes = _grid(1, len(columns), sharex=False)
    for ax, column in zip(axes[0], columns):
        cell = data[data["column"] == column]
        for variant in ctx.ordered(cell["variant"]):
            draw_final_points(ax, cell[cell["variant"] == variant], ctx.palette[variant])
        if not _has_values(cell):
            _no_data(ax)
        xs = sorted(cell["x"].dropna().unique())
        if log_x and xs and xs[0] > 0:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [format_value(v) for v in xs])
        _label(ax, column, AXIS_LABELS.get(x, x), ylabel)
    values = data[["y", "low", "high"]].to_numpy(dtype=float).ravel()
    limit_to_data(axes[0, 0], values[np.isfinite(values)], "linear", domain)
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
    rows, columns = _order(data["row"]), _order(data["column"])
    fig, axes = _grid(len(rows), len(columns), sharex=False, sharey=False)
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
                _no_data(ax)
            else:
                ax.set_ylim(1e-8, max(10.0, float(cell["y"].max()) * 3))
            _label(ax, f"{row} · {column}" if column else row, "Hessian eigenvalue", "spectral density")
    entries = [(Line2D([], [], color=GREY, linewidth=1.2),
                "density: stochastic Lanczos quadrature, Gaussian-smoothed, mean over seeds")]
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def surface_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: analysed steps (contours of log10 loss over the plane of two filter-normalised
    directions, one seed), then the basin radius against step; columns: variant x condition."""
    contours = data[data["style"] == "contour"]
    steps, columns = _order(contours["row"]), _order(contours["column"])
    radius = data[data["row"] == "basin radius"]
    fig, axes = _grid(len(steps) + 1, max(len(columns), 1), sharex=False, sharey=False)
    levels = None
    finite = np.log10(contours["loss"].where(contours["loss"] > 0)).dropna()
    if len(finite):
        levels = np.linspace(float(finite.min()), float(np.quantile(finite, 0.98)), 15)
    for i, row in enumerate(steps):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            cell = contours[(contours["row"] == row) & (contours["column"] == column)]
            if cell.empty or levels is None:
                _no_data(ax)
            else:
                table = cell.pivot_table(index="y", columns="x", values="loss")
                z = np.log10(table.to_numpy(dtype=float).clip(min=1e-12))
                ax.contourf(table.columns, table.index, np.minimum(z, levels[-1]), levels=levels, cmap="viridis")
                ax.contour(table.columns, table.index, z, levels=levels, colors="white", linewidths=0.3)
                ax.plot([0], [0], marker="+", color="red", markersize=8, gid="centre")
                ax.set_aspect("equal")
            _label(ax, f"{row} · {column}", "direction 1", "direction 2")
    for j in range(max(len(columns), 1)):
        ax = axes[len(steps), j]
        if j:
            ax.set_visible(False)
            continue
        for column in _order(radius["column"]):
            for variant in ctx.ordered(radius["variant"]):
                draw_series(ax, radius[(radius["column"] == column) & (radius["variant"] == variant)]
                            .dropna(subset=["style"]), ctx.palette[variant])
        if not _has_values(radius.dropna(subset=["style"])):
            _no_data(ax)
        _label(ax, "basin radius (loss reaches 2x its centre value)", "step", "distance")
    entries = [(Patch(color=plt.get_cmap("viridis")(0.5)), "log10 loss, lowest seed; + the checkpoint")]
    entries += style_entries(radius)
    legend(fig, ctx, data["variant"].dropna(), entries)
    return fig


def axis_figure(ctx: Context, data: pd.DataFrame, xlabel: str, x: str = "layer", log_x: bool = False) -> plt.Figure:
    """Curves against something other than the step (a layer's depth, a group size): rows =
    measures, columns = steps and conditions, hue = variant."""
    rows, columns = _order(data["row"]), _order(data["column"])
    fig, axes = _grid(len(rows), len(columns), sharey="row")
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            cell = data[(data["row"] == row) & (data["column"] == column)]
            scales = cell["scale"].dropna()
            ax.set_yscale(scales.iloc[0] if len(scales) else "linear")
            if log_x:
                ax.set_xscale("log", base=2)
            drawable = cell.dropna(subset=["style"])
            for variant in ctx.ordered(drawable["variant"]):
                draw_series(ax, drawable[drawable["variant"] == variant], ctx.palette[variant], x=x)
            if not _has_values(drawable):
                _no_data(ax)
            _label(ax, column, xlabel, row)
    legend(fig, ctx, data["variant"].dropna(), style_entries(data))
    return fig


@dataclass(frozen=True)
class Drawer:
    """A figure kind: its title, what it plots (a tidy frame) and how it draws that frame."""

    title: str
    data: Callable[[Context], pd.DataFrame]
    plot: Callable[[Context, pd.DataFrame], plt.Figure]

    def __call__(self, ctx: Context) -> plt.Figure:
        return self.plot(ctx, self.data(ctx))


def _curves(ctx: Context) -> pd.DataFrame:
    return curves_data(ctx, *CURVES[ctx.kind])


def _unit_input(ctx: Context) -> pd.DataFrame:
    return units_data(ctx, last_layer_first_unit=True)


DRAWERS: dict[str, Drawer] = {
    "accuracy": Drawer(f"train accuracy ({TRAIN_MODE}) and test accuracy ({EVAL_MODE})", _curves, curves_figure),
    "train_accuracy": Drawer(f"train accuracy, {TRAIN_MODE} (top) and {EVAL_MODE} (bottom)", _curves,
                             curves_figure),
    "test_accuracy": Drawer(f"test accuracy ({EVAL_MODE})", _curves, curves_figure),
    "train_loss": Drawer("training loss", _curves, curves_figure),
    "distributions": Drawer("single units' activation distributions over steps", units_data, units_figure),
    "unit_input": Drawer("one last-hidden-layer unit's input to the non-linearity", _unit_input, units_figure),
    "moment_changes": Drawer("per-unit change of activation moments between successive steps", _curves,
                             curves_figure),
    "ics": Drawer("internal covariate shift (Definition 2.1)", _curves, curves_figure),
    "landscape": Drawer("loss landscape along the gradient", landscape_data, landscape_figure),
    "curvature": Drawer("curvature along the gradient and top Hessian eigenvalue", curvature_data, curves_figure),
    "accuracy_vs_lr": Drawer("final test accuracy against the learning rate", final_data, final_figure),
    "accuracy_vs_init_scale": Drawer("final test accuracy against the initial weight scale", final_data,
                                     final_figure),
    "accuracy_vs_dropout": Drawer("final test accuracy against the dropout rate", final_data, final_figure),
    "generalisation_gap": Drawer("generalisation gap (final train − test accuracy)", final_data, final_figure),
    "hessian_spectrum": Drawer("Hessian: extreme eigenvalues, trace, gradient share in the top eigenvectors",
                               spectrum_data, curves_figure),
    "spectral_density": Drawer("Hessian spectral density (stochastic Lanczos quadrature)", density_data,
                               density_figure),
    "edge_of_stability": Drawer("full-batch gradient descent: loss and sharpness against 2/lr", eos_data,
                                curves_figure),
    "loss_surface": Drawer("loss on a plane of two filter-normalised directions, and the basin radius",
                           surface_data, surface_figure),
    "layer_measures": Drawer("per-layer similarity of samples, rank, gradient norm and variance against depth",
                             layer_measures_data, lambda ctx, data: axis_figure(ctx, data, "layer (depth)")),
    "gradient_vs_group_size": Drawer("first-layer gradient norm against GroupNorm's group size",
                                     group_size_data, lambda ctx, data: axis_figure(ctx, data, "group size",
                                                                                    x="group_size", log_x=True)),
    "weight_norm": Drawer("weight norms beside the scale-invariance prediction, effective learning rate",
                          weight_norm_data, curves_figure),
}


# ---------------------------------------------------------------------------------------------
# entry points


def context(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path]) -> Context:
    """A Context for ``kind``; an unknown kind or a missing table is an error naming what is wrong."""
    if kind not in DRAWERS:
        raise KeyError(f"no figure kind {kind!r}; known: {sorted(DRAWERS)}")
    missing = [name for name in figure_tables(kind) if name not in tables]
    if missing:
        raise TableError(f"figure {kind!r} of study {study!r} needs tables {missing} (given: {sorted(tables)})")
    return Styled(kind, study, study_cfg, StudyTables(tables, study_cfg))


def figure_data(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path]) -> pd.DataFrame:
    """The tidy frame figure ``kind`` draws: one row per plotted point, labelled by panel
    (``row``, ``column``), ``variant`` and, for curves, ``series`` and ``style``."""
    return DRAWERS[kind].data(context(kind, study, study_cfg, tables))


def render(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path]) -> plt.Figure:
    """The figure as a matplotlib Figure, not saved (the caller closes it)."""
    ctx = context(kind, study, study_cfg, tables)
    with sns.axes_style("whitegrid"), plt.rc_context({"axes.titlesize": 8, "font.size": 8}):
        fig = DRAWERS[kind](ctx)
        title = textwrap.fill(f"{study}: {DRAWERS[kind].title}", width=int(fig.get_figwidth() * 11))
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: plt.Figure, out_png: Path) -> list[Path]:
    """Write ``out_png`` and the same-stem PDF atomically; metadata fixed so reruns are identical."""
    out_png = Path(out_png)
    written = []
    for path, metadata in ((out_png, {"Software": None}),
                           (out_png.with_suffix(".pdf"), {"CreationDate": None, "Producer": None})):
        written.append(atomic_write(path, lambda tmp, fmt=path.suffix[1:], meta=metadata:
                                    fig.savefig(tmp, format=fmt, dpi=DPI, metadata=meta)))
    return written


def draw(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path], out_png: Path) -> list[Path]:
    """Draw figure ``kind`` of ``study`` from ``tables`` (table name -> file, exactly
    `catalog.figure_tables(kind)`) to ``out_png`` and the same-stem PDF; returns both paths."""
    fig = render(kind, study, study_cfg, tables)
    try:
        return save_figure(fig, out_png)
    finally:
        plt.close(fig)


def draw_study(study: str, study_cfg: Mapping, tables: Path, kinds, out_dir: Path) -> list[Path]:
    """Draw each figure kind in `kinds` of `study` from its tables folder into
    `out_dir/<kind>.png` and `.pdf`; returns the files written."""
    written = []
    for kind in kinds:
        if kind not in DRAWERS:
            raise KeyError(f"no figure kind {kind!r}; known: {sorted(DRAWERS)}")
        paths = {name: Path(tables) / f"{name}.csv" for name in figure_tables(kind)}
        written += draw(kind, study, study_cfg, paths, Path(out_dir) / f"{kind}.png")
    return written
