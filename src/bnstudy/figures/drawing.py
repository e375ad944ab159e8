"""Drawing helpers every figure kind shares: the fixed colour of each variant (`Styled`), panel
grids, a curve with its band or a seed's own line, axis limits from what is drawn, the legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from .frames import Context, MIN_BAND_SEEDS  # noqa: E402



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


def axes_grid(n_rows: int, n_cols: int, sharex: str | bool = True, sharey: str | bool = "row"):
    """A constrained-layout grid of panels, PANEL_WIDTH x PANEL_HEIGHT each plus room for the legend."""
    width = max(PANEL_WIDTH * max(n_cols, 1) + 1.0, MIN_WIDTH)
    return plt.subplots(max(n_rows, 1), max(n_cols, 1), squeeze=False, sharex=sharex, sharey=sharey,
                        layout="constrained", figsize=(width, PANEL_HEIGHT * max(n_rows, 1) + 1.2))


def mark_no_data(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center", color="0.5")


def label_axes(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title on every panel; x label on the bottom row, y label on the first column."""
    ax.set_title(title, fontsize=8)
    spec = ax.get_subplotspec()
    ax.set_xlabel(xlabel if spec.is_last_row() else "")
    ax.set_ylabel(ylabel if spec.is_first_col() else "")


def in_order(values: pd.Series) -> list[str]:
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
    rows, columns = in_order(data["row"]), in_order(data["column"])
    fig, axes = axes_grid(len(rows), len(columns), sharey=sharey)
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
            if not has_values(drawable):
                mark_no_data(ax)
            measure = column if measures_in_columns else row
            label_axes(ax, row if measures_in_columns else column, "step", measure)
            if measures_in_columns:  # every column is its own measure: label each panel
                ax.set_ylabel(measure)
            first = {"row": j == 0, "col": i == 0}.get(sharey, True)
            if first:
                scope = {"row": data[data["row"] == row], "col": data[data["column"] == column]}.get(sharey, cell)
                limit_to_data(ax, plotted_values(scope.dropna(subset=["style"])), scale, domains.get(measure))
    return fig


def has_values(frame: pd.DataFrame) -> bool:
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
