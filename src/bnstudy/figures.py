"""Per-study tables -> seaborn figures (PNG + PDF), one function per kind of figure.

Reads only ``results/tables/{study}/*.csv`` (written by :mod:`bnstudy.aggregate`); never imports
torch, so figures can be redrawn on a machine without the training stack.

Conventions shared by every figure, so that they read alike:

* seeds are the unit: a line is the mean over seeds and its band the 95% Student-t interval over
  seeds (:func:`bnstudy.stats.ci_bounds`, the same interval the claims table reports);
* hue is the variant, with one fixed colour per variant across all figures;
* panel columns are the run conditions (lr and the study's grid values), so runs that differ in
  anything but the seed are never averaged together;
* a diverged run is drawn up to its last finite point, marked there with an ``x``, and counted in
  the legend ("k/n runs diverged"); a figure never fails because a run diverged.

``FIGURES`` (study -> figure name -> caption) is what the Snakefile iterates; ``draw`` renders one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import matplotlib.transforms as mtransforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bnstudy.aggregate import (  # noqa: E402
    ANALYSIS_COLUMNS, LABEL_COLUMNS, RUN_TABLE_COLUMNS, RUNS_COLUMNS_AFTER_GRID, TableError,
    atomic_write, grid_columns, read_table,
)
from bnstudy.stats import ci_bounds  # noqa: E402

# Index into seaborn's colour-blind palette per variant, fixed so a variant looks the same in every
# figure; the lp variants avoid the hues of batchnorm/standard they are compared with.
VARIANT_COLOURS = {"standard": 0, "batchnorm": 1, "noisy_batchnorm": 2, "standard_noise": 3,
                   "l1": 4, "l2": 7, "linf": 8}
AXIS_LABELS = {"lr": "learning rate", "init_scale": "initial weight scale (x Glorot)",
               "dropout": "dropout rate"}
PANEL_WIDTH, PANEL_HEIGHT, DPI = 3.6, 2.6, 150
NO_DATA = "no data"

TABLE_COLUMNS = {"runs": RUNS_COLUMNS_AFTER_GRID, **RUN_TABLE_COLUMNS, **ANALYSIS_COLUMNS}


# ---------------------------------------------------------------------------------------------
# data access


class _Tables:
    """Lazily read, validated study tables (each file read at most once per figure)."""

    def __init__(self, tables_dir: Path):
        self.tables_dir = Path(tables_dir)
        self._cache: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            path = self.tables_dir / f"{name}.csv"
            frame = read_table(path, LABEL_COLUMNS + TABLE_COLUMNS[name])
            self._cache[name] = frame.replace([np.inf, -np.inf], np.nan)
        return self._cache[name].copy()


@dataclass
class _Context:
    """Everything a figure kind needs: the study's tables, config and the shared styling."""

    study: str
    study_cfg: dict
    tables: _Tables

    @cached_property
    def grid(self) -> list[str]:
        return list(grid_columns(self.study_cfg).values())

    @cached_property
    def variants(self) -> list[str]:
        """Config order first (the order the paper discusses them), then anything else in the data."""
        seen = list(self.tables["runs"]["variant"].dropna().unique())
        configured = list(self.study_cfg.get("variants") or [])
        return configured + [v for v in seen if v not in configured]

    @cached_property
    def palette(self) -> dict[str, tuple]:
        """A fixed colour per variant across all figures (standard is always the same blue)."""
        base = sns.color_palette("colorblind", 10)
        palette = {name: base[index] for name, index in VARIANT_COLOURS.items()}
        others = [v for v in self.variants if v not in palette]
        return palette | dict(zip(others, sns.color_palette("husl", len(others))))

    @cached_property
    def diverged_counts(self) -> dict[str, tuple[int, int]]:
        runs = self.tables["runs"]
        diverged = runs["status"].eq("diverged").groupby(runs["variant"]).agg(["sum", "count"])
        return {variant: (int(row["sum"]), int(row["count"])) for variant, row in diverged.iterrows()}

    def layers(self, frame: pd.DataFrame) -> list[int]:
        """The study's configured layers (paper numbering), else every layer in the table."""
        configured = self.study_cfg.get("layers")
        return [int(x) for x in configured] if configured else sorted(frame["layer"].dropna().unique())

    def present_variants(self, frame: pd.DataFrame) -> list[str]:
        present = set(frame["variant"])
        return [v for v in self.variants if v in present]


# ---------------------------------------------------------------------------------------------
# reshaping helpers


@dataclass(frozen=True)
class Metric:
    """One plotted quantity: a column (optionally restricted to rows where ``where`` holds)."""

    column: str
    label: str
    scale: str = "linear"  # "linear", "log", or "auto" (log when positive and spanning > 2 decades)
    where: tuple[str, object] | None = None


@dataclass(frozen=True)
class Panel:
    """A row of panels in a figure: its label (also the long table's ``panel`` value) and scale."""

    label: str
    scale: str = "linear"


def _fmt(value) -> str:
    """Numbers compactly (0.1, 1e-06), anything else as text."""
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f"{value:g}" if is_number else str(value)


def with_conditions(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Add a ``condition`` label ("lr = 0.1 · init_scale = 2") and return the labels in sorted order.

    Conditions are what must not be averaged together; seeds within one condition are.
    """
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return frame.assign(condition=""), [""]
    combos = frame[columns].drop_duplicates().sort_values(columns, na_position="last")
    combos["condition"] = [" · ".join(f"{c} = {_fmt(v)}" for c, v in zip(columns, values))
                           for values in combos.itertuples(index=False)]
    frame = frame.merge(combos, on=columns, how="left")
    return frame, list(combos["condition"]) or [""]


def long_panels(frame: pd.DataFrame, metrics: Sequence[Metric]) -> tuple[pd.DataFrame, list[Panel]]:
    """Stack ``metrics`` into one long table with ``panel`` (the metric's label) and ``value``."""
    pieces, panels = [], []
    for metric in metrics:
        selected = frame if metric.where is None else frame[frame[metric.where[0]] == metric.where[1]]
        pieces.append(selected.assign(panel=metric.label, value=selected[metric.column]))
        panels.append(Panel(metric.label, metric.scale))
    return pd.concat(pieces, ignore_index=True), panels


# ---------------------------------------------------------------------------------------------
# drawing primitives


def _grid(n_rows: int, n_cols: int, sharey: str | bool) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(PANEL_WIDTH * n_cols + 1.0, PANEL_HEIGHT * n_rows + 1.0),
        squeeze=False, sharex="col", sharey=sharey, layout="constrained",
    )
    return fig, axes


def resolve_scale(values: pd.Series, scale: str) -> str:
    """"log" or "linear": "auto" means log when all values are positive and span > 2 decades;
    "log" falls back to linear when nothing is positive (nothing could be drawn)."""
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    positive = finite[finite > 0]
    if scale == "auto":
        spans_decades = len(positive) == len(finite) > 0 and positive.max() > 100 * positive.min()
        return "log" if spans_decades else "linear"
    return "log" if scale == "log" and len(positive) else "linear"


def limit_to_data(ax: plt.Axes, values: pd.Series, scale: str) -> None:
    """Fit the y axis to the per-seed values, not to the bands: with few seeds a t band can span
    many decades and would flatten every curve. A band wider than the data is clipped."""
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    if scale == "log":
        finite = np.log10(finite[finite > 0])
    if finite.empty:
        return
    low, high = float(finite.min()), float(finite.max())
    pad = 0.05 * (high - low) or 0.5
    low, high = low - pad, high + pad
    ax.set_ylim((10 ** low, 10 ** high) if scale == "log" else (low, high))


def _no_data(ax: plt.Axes) -> None:
    ax.text(0.5, 0.5, NO_DATA, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _mark_diverged(ax: plt.Axes, cell: pd.DataFrame, x: str, y: str, palette: dict) -> None:
    """An ``x`` at the last finite point of each diverged run: where its curve stops, and why."""
    diverged = cell[(cell["status"] == "diverged") & cell[y].notna()]
    if diverged.empty:
        return
    last = diverged.sort_values(x).groupby("run").tail(1)
    ax.scatter(last[x], last[y], marker="x", s=30, zorder=5,
               color=[palette[v] for v in last["variant"]])


def draw_lines(ax: plt.Axes, cell: pd.DataFrame, ctx: _Context, y: str = "value", x: str = "step",
               scale: str = "linear", **style) -> None:
    """Mean over seeds per variant with a 95% t band (or bars), diverged runs marked.

    The scale is set before plotting because seaborn aggregates in the axis' scale: on a log axis
    the mean and interval are taken over log10 values (a geometric mean), so a band never
    reaches below zero and one large seed does not dominate.
    """
    ax.set_yscale(scale)
    cell = cell[cell[y].notna() & ((cell[y] > 0) if scale == "log" else True)]
    if cell.empty:
        _no_data(ax)
        return
    sns.lineplot(data=cell, x=x, y=y, hue="variant", hue_order=ctx.present_variants(cell),
                 palette=ctx.palette, estimator="mean", errorbar=ci_bounds, legend=False, ax=ax,
                 **style)
    _mark_diverged(ax, cell, x, y, ctx.palette)


def draw_band(ax: plt.Axes, cell: pd.DataFrame, low: str, high: str, colour,
              mid: str | None = None) -> None:
    """A band from the seed-mean of ``low`` to the seed-mean of ``high`` over steps (+ ``mid`` line)."""
    columns = [c for c in (low, high, mid) if c]
    means = cell.groupby("step")[columns].mean().dropna(how="all")
    if means.empty:
        return
    ax.fill_between(means.index, means[low], means[high], color=colour, alpha=0.3, linewidth=0)
    for edge in (low, high):
        ax.plot(means.index, means[edge], color=colour, linewidth=0.6, alpha=0.8)
    if mid:
        ax.plot(means.index, means[mid], color=colour, linewidth=1.6)


def _legend(fig: plt.Figure, ctx: _Context, variants: Sequence[str]) -> None:
    """One legend per figure: variants with their divergence counts, and the diverged marker."""
    handles = []
    any_diverged = False
    for variant in variants:
        n_diverged, n_runs = ctx.diverged_counts.get(variant, (0, 0))
        any_diverged |= n_diverged > 0
        suffix = f" ({n_diverged}/{n_runs} runs diverged)" if n_diverged else ""
        handles.append(Line2D([], [], color=ctx.palette[variant], linewidth=2, label=variant + suffix))
    if any_diverged:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="", label="diverged run"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)


def _label(ax: plt.Axes, title_parts: Sequence[str], xlabel: str, ylabel: str) -> None:
    """Title from the non-empty parts; x label only on the bottom row (x axes are shared)."""
    ax.set_title(" · ".join(p for p in title_parts if p), fontsize=9)
    ax.set_xlabel(xlabel if ax.get_subplotspec().is_last_row() else "")
    ax.set_ylabel(ylabel if ax.get_subplotspec().is_first_col() else "")


# ---------------------------------------------------------------------------------------------
# figure kinds


def curves_figure(ctx: _Context, long: pd.DataFrame, panels: Sequence[Panel],
                  by_layer: bool = False) -> plt.Figure:
    """Rows: panels (metrics); columns: conditions (layer x lr x grid when ``by_layer``); x: step;
    hue: variant."""
    if by_layer:
        long = long[long["layer"].isin(ctx.layers(long))]
    long, conditions = with_conditions(long, ["layer"] * by_layer + ["lr", *ctx.grid])
    fig, axes = _grid(len(panels), len(conditions), sharey="row")
    for row, panel in enumerate(panels):
        values = long.loc[long["panel"] == panel.label, "value"]
        scale = resolve_scale(values, panel.scale)
        for col, condition in enumerate(conditions):
            ax = axes[row, col]
            cell = long[(long["panel"] == panel.label) & (long["condition"] == condition)]
            draw_lines(ax, cell, ctx, scale=scale)
            _label(ax, [condition], "step", panel.label)
        limit_to_data(axes[row, 0], values, scale)  # y is shared along the row
    _legend(fig, ctx, ctx.present_variants(long) or ctx.variants)
    return fig


def accuracy_curves(ctx: _Context, splits: Sequence[str]) -> plt.Figure:
    """Accuracy on each split (eval.csv) over steps."""
    metrics = [Metric("accuracy", f"{split} accuracy", where=("split", split)) for split in splits]
    return curves_figure(ctx, *long_panels(ctx.tables["eval"], metrics))


def ics_curves(ctx: _Context) -> plt.Figure:
    """ICS (Definition 2.1) per layer: l2 distance (log) and cosine between G and G'."""
    ics = ctx.tables["ics"]
    metrics = [Metric("l2_diff", "‖G − G′‖₂", "log"), Metric("cosine", "cos(G, G′)")]
    return curves_figure(ctx, *long_panels(ics, metrics), by_layer=True)


def moment_change_curves(ctx: _Context) -> plt.Figure:
    """|Δ mean| and |Δ variance| between consecutive logged steps of each layer's input."""
    layers = ctx.tables["layers"].sort_values(["run", "layer", "step"])
    by_run_layer = layers.groupby(["run", "layer"], sort=False)
    layers["mean_change"] = by_run_layer["mean"].diff().abs()
    layers["var_change"] = by_run_layer["var"].diff().abs()
    metrics = [Metric("mean_change", "|μₜ₊₁ − μₜ|", "log"),
               Metric("var_change", "|σ²ₜ₊₁ − σ²ₜ|", "log")]
    return curves_figure(ctx, *long_panels(layers, metrics), by_layer=True)


def curvature_curves(ctx: _Context) -> plt.Figure:
    """gᵀHg/‖g‖² along the gradient and the top Hessian eigenvalue over steps."""
    metrics = [Metric("grad_quadratic", "gᵀHg / ‖g‖²", "auto"),
               Metric("top_eigenvalue", "top Hessian eigenvalue", "auto")]
    return curves_figure(ctx, *long_panels(ctx.tables["curvature"], metrics))


def percentile_bands(ctx: _Context, columns: tuple[str, str, str] = ("p15", "p50", "p85"),
                     last_layer_only: bool = False, ylabel: str = "input p15–p50–p85") -> plt.Figure:
    """Small multiples (rows: layers; columns: variant x condition) of a p15–p85 band and p50 line."""
    layers = ctx.tables["layers"]
    chosen = [int(layers["layer"].max())] if last_layer_only and len(layers) else ctx.layers(layers)
    layers, conditions = with_conditions(layers, ["lr", *ctx.grid])
    columns_ = [(variant, condition) for condition in conditions for variant in ctx.variants]
    fig, axes = _grid(max(len(chosen), 1), len(columns_), sharey="row")
    low, mid, high = columns
    for row, layer in enumerate(chosen):
        for col, (variant, condition) in enumerate(columns_):
            ax = axes[row, col]
            cell = layers[(layers["layer"] == layer) & (layers["variant"] == variant)
                          & (layers["condition"] == condition)]
            if cell[mid].notna().any():
                draw_band(ax, cell, low, high, ctx.palette[variant], mid=mid)
                _mark_diverged(ax, cell, "step", mid, ctx.palette)
            else:
                _no_data(ax)
            _label(ax, [variant, condition], "step", f"layer {layer}: {ylabel}")
    _legend(fig, ctx, ctx.variants)
    return fig


def landscape_summary(landscape: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    """Per run and step, over the step sizes eta along the gradient: loss and gradient-difference
    ranges and the effective beta-smoothness (max of beta)."""
    along_gradient = landscape[landscape["direction"] == "gradient"]
    keys = LABEL_COLUMNS + list(grid) + ["step"]
    return along_gradient.groupby(keys, dropna=False, as_index=False).agg(
        loss_min=("loss", "min"), loss_max=("loss", "max"),
        grad_diff_min=("grad_diff", "min"), grad_diff_max=("grad_diff", "max"),
        beta_max=("beta", "max"),
    )


LANDSCAPE_MEASURES = [
    ("loss_min", "loss_max", "loss range over η", "auto"),
    ("grad_diff_min", "grad_diff_max", "‖g − ∇L(W − ηg)‖₂ range", "log"),
    (None, "beta_max", "effective β-smoothness", "log"),
]


def landscape_panels(ctx: _Context) -> plt.Figure:
    """Rows: conditions; columns: (a) loss range, (b) gradient predictiveness, (c) beta-smoothness."""
    summary, conditions = with_conditions(landscape_summary(ctx.tables["landscape"], ctx.grid),
                                          ["lr", *ctx.grid])
    fig, axes = _grid(len(conditions), len(LANDSCAPE_MEASURES), sharey="col")
    for row, condition in enumerate(conditions):
        rows = summary[summary["condition"] == condition]
        for col, (low, high, label, scale) in enumerate(LANDSCAPE_MEASURES):
            ax = axes[row, col]
            scale = resolve_scale(summary[high], scale)
            if low is None:
                draw_lines(ax, rows, ctx, y=high, scale=scale)
                limit_to_data(ax, summary[high], scale)
            elif rows[high].notna().any():
                for variant in ctx.present_variants(rows):
                    draw_band(ax, rows[rows["variant"] == variant], low, high, ctx.palette[variant])
                ax.set_yscale(scale)
            else:
                _no_data(ax)
            _label(ax, [condition], "step", "")
            ax.set_ylabel(label)
    _legend(fig, ctx, ctx.present_variants(summary) or ctx.variants)
    return fig


def _first_present(frame: pd.DataFrame, candidates: Sequence[str], where: str) -> str:
    for column in candidates:
        if column in frame.columns:
            return column
    raise TableError(f"{where}: none of the columns {list(candidates)} is present")


def final_metric_vs(ctx: _Context, x_candidates: Sequence[str], value: Callable[[pd.DataFrame], pd.Series],
                    ylabel: str, log_x: bool) -> plt.Figure:
    """A final metric (runs.csv) against a run setting, per variant; diverged runs as ``x`` on the
    bottom edge (they have no final metric)."""
    runs = ctx.tables["runs"]
    x = _first_present(runs, x_candidates, str(ctx.tables.tables_dir / "runs.csv"))
    runs = runs.assign(value=value(runs))
    runs, conditions = with_conditions(runs, [c for c in ["lr", *ctx.grid] if c != x])
    fig, axes = _grid(1, len(conditions), sharey="row")
    bottom_edge = mtransforms.blended_transform_factory
    for col, condition in enumerate(conditions):
        ax = axes[0, col]
        cell = runs[runs["condition"] == condition]
        draw_lines(ax, cell, ctx, x=x, marker="o", err_style="bars")
        diverged = cell[cell["status"] == "diverged"]
        ax.scatter(diverged[x], np.full(len(diverged), 0.03), marker="x", s=40, clip_on=False,
                   color=[ctx.palette[v] for v in diverged["variant"]],
                   transform=bottom_edge(ax.transData, ax.transAxes))
        if log_x and (cell[x] > 0).all() and len(cell):
            ax.set_xscale("log")
        _label(ax, [condition], AXIS_LABELS.get(x, x), ylabel)
    _legend(fig, ctx, ctx.variants)
    return fig


def _final_test_accuracy(runs: pd.DataFrame) -> pd.Series:
    return runs["final_test_accuracy"]


def _generalisation_gap(runs: pd.DataFrame) -> pd.Series:
    return runs["final_train_accuracy"] - runs["final_test_accuracy"]


# ---------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class _Figure:
    make: Callable[[_Context], plt.Figure]
    caption: str
    title: str = field(default="")


_BANDS = (" Lines are the mean over seeds (geometric mean on log axes) and shaded bands the 95%"
          " t-interval over seeds (of log values on log axes), clipped to the range of the per-seed"
          " values; an x marks where a diverged run stops.")
_DISTRIBUTION = (" Each panel shows, over training steps, the band between the 15th and 85th"
                 " percentiles and the median (50th percentile) of the layer's pre-activation (input of"
                 " the non-linearity, after normalisation and noise) over the batch and spatial"
                 " positions, averaged over seeds.")


_POINTS = (" Points are means over seeds with 95% t-intervals over seeds; an x on the bottom edge"
           " marks a diverged run, which has no final value.")


def _caption(*sentences: str) -> str:
    return " ".join(s.strip() for s in sentences)


def _final_figure(x_candidates: tuple[str, ...], value: Callable[[pd.DataFrame], pd.Series],
                  ylabel: str, log_x: bool, text: str, title: str) -> _Figure:
    """A final-metric-against-a-setting figure (the 2015 claim studies)."""
    make = partial(final_metric_vs, x_candidates=x_candidates, value=value, ylabel=ylabel, log_x=log_x)
    return _Figure(make, _caption(text, _POINTS), title)


_ACCURACY = _Figure(
    partial(accuracy_curves, splits=("train", "test")),
    _caption("Training and test accuracy over steps of the VGG network with and without BatchNorm, one"
             " column per learning rate (reproduces Santurkar et al. 2018, Fig. 1a-b). The paper finds"
             " that BatchNorm trains faster, tolerates the higher learning rate and ends at higher test"
             " accuracy (83% vs 80% on CIFAR-10 without augmentation).", _BANDS),
    "train and test accuracy (2018 Fig. 1a-b)",
)

_REGISTRY: dict[str, dict[str, _Figure]] = {
    "performance": {
        "accuracy": _ACCURACY,
        "distributions": _Figure(
            percentile_bands,
            _caption("Activation distributions of the VGG network with and without BatchNorm for the"
                     " configured layers (reproduces 2018 Fig. 1c).", _DISTRIBUTION,
                     "The paper finds that, although the performance gap between the networks is"
                     " clear, the difference in how their distributions evolve is much less"
                     " pronounced.", _BANDS),
            "activation distributions (2018 Fig. 1c)"),
    },
    "noisy_bn": {
        "train_accuracy": _Figure(
            partial(accuracy_curves, splits=("train",)),
            _caption("Training accuracy over steps of the standard network, BatchNorm, BatchNorm"
                     " followed by random time-varying noise in mean and scale (noisy BatchNorm,"
                     " Algorithm 1) and the same noise without BatchNorm (reproduces 2018 Fig. 2a)."
                     " The paper finds that noisy BatchNorm trains almost as well as BatchNorm and"
                     " better than the standard network despite its unstable distributions, while"
                     " noise without BatchNorm prevents training.", _BANDS),
            "train accuracy with injected noise (2018 Fig. 2)"),
        "distributions": _Figure(
            percentile_bands,
            _caption("Activation distributions of the four variants of the noise experiment for the"
                     " configured layers (reproduces 2018 Fig. 2b).", _DISTRIBUTION,
                     "The paper finds that with noise the distributions of the BatchNorm network are"
                     " far less stable than the standard network's, yet it trains better.", _BANDS),
            "activation distributions with injected noise (2018 Fig. 2)"),
        "moment_changes": _Figure(
            moment_change_curves,
            _caption("Change of the moments of each configured layer's input between consecutive"
                     " logged steps, \\|μ_{t+1} − μ_t\\| and \\|σ²_{t+1} − σ²_t\\| (log scale), per variant of"
                     " the noise experiment (reproduces 2018 Fig. 8). The paper finds that the noisy"
                     " BatchNorm network's moments change far more from step to step than the"
                     " standard network's, i.e. its distributional stability is worse.", _BANDS),
            "per-step change of activation moments (2018 Fig. 8)"),
    },
    "ics": {
        "ics": _Figure(
            ics_curves,
            _caption("Internal covariate shift (Definition 2.1) of the VGG network over steps for the"
                     " configured layers: the l2 distance ‖G − G′‖₂ (log scale) and the cosine between"
                     " a layer's gradient before (G) and after (G′) the earlier layers take their"
                     " update, one column per learning rate (reproduces 2018 Fig. 3, VGG). Ideal"
                     " values are 0 and 1. The paper finds that BatchNorm does not reduce ICS and"
                     " often increases it.", _BANDS),
            "internal covariate shift, VGG (2018 Fig. 3)"),
    },
    "ics_dln": {
        "ics": _Figure(
            ics_curves,
            _caption("Internal covariate shift (Definition 2.1) of the 25-layer deep linear network"
                     " over steps for the configured layers: ‖G − G′‖₂ (log scale) and cos(G, G′), one"
                     " column per learning rate (reproduces 2018 Fig. 3, DLN). The paper finds that"
                     " the BatchNorm network shows larger ICS and a cosine near zero, i.e. BatchNorm"
                     " does not reduce ICS.", _BANDS),
            "internal covariate shift, deep linear network (2018 Fig. 3)"),
    },
}

_LANDSCAPE_TEXT = (
    "Loss landscape along the gradient over steps: (a) the range between the minimum and maximum of"
    " the loss L(W − ηg) over the step sizes η, (b) gradient predictiveness, the range of"
    " ‖g − ∇L(W − ηg)‖₂ over η (log scale), and (c) effective β-smoothness, the maximum over η of"
    " ‖g − ∇L(W − ηg)‖₂ / ‖ηg‖₂ (log scale). Ranges are averaged over seeds.")

_REGISTRY.update({
    "landscape": {
        "landscape": _Figure(
            landscape_panels,
            _caption(_LANDSCAPE_TEXT, "Reproduces 2018 Fig. 4 (VGG). The paper finds that without"
                     " BatchNorm the loss varies widely early in training, gradient predictiveness is"
                     " about two orders of magnitude worse early on and β-smoothness is consistently"
                     " worse.", _BANDS),
            "loss landscape, VGG (2018 Fig. 4)"),
    },
    "landscape_dln": {
        "landscape": _Figure(
            landscape_panels,
            _caption(_LANDSCAPE_TEXT, "Reproduces 2018 Fig. 10 (deep linear network). The paper"
                     " finds the same smoothing by BatchNorm as in the VGG network: a narrower loss"
                     " range, more predictive gradients and a smaller β.", _BANDS),
            "loss landscape, deep linear network (2018 Fig. 10)"),
    },
    "lp_norms": {
        "accuracy": _Figure(
            _ACCURACY.make,
            _caption("Training and test accuracy over steps of the VGG network with l1, l2 and l∞"
                     " normalisation, BatchNorm and no normalisation (reproduces 2018 Fig. 5). The"
                     " paper finds that the lp normalisations train as well as or better than"
                     " BatchNorm.", _BANDS),
            "lp normalisation: accuracy (2018 Fig. 5)"),
        "distributions": _Figure(
            percentile_bands,
            _caption("Activation distributions of the lp-normalised networks for the configured"
                     " layers (reproduces 2018 Fig. 6).", _DISTRIBUTION,
                     "The paper finds that these distributions are far from Gaussian and not"
                     " stable, yet the networks train well.", _BANDS),
            "lp normalisation: activation distributions (2018 Fig. 6)"),
        "landscape": _Figure(
            landscape_panels,
            _caption(_LANDSCAPE_TEXT, "Reproduces 2018 Figs. 12-13 for the lp normalisations. The"
                     " paper finds that lp normalisation smooths the landscape much like"
                     " BatchNorm.", _BANDS),
            "lp normalisation: loss landscape (2018 Figs. 12-13)"),
    },
    "dln_distributions": {
        "distributions": _Figure(
            percentile_bands,
            _caption("Activation distributions of the deep linear network with and without"
                     " BatchNorm for the configured layers (reproduces 2018 Fig. 9).", _DISTRIBUTION,
                     "The paper uses them to compare the distributional stability of the DLN with"
                     " and without BatchNorm, as Fig. 1c does for the VGG network.", _BANDS),
            "deep linear network: activation distributions (2018 Fig. 9)"),
    },
    "curvature": {
        "curvature": _Figure(
            curvature_curves,
            _caption("Curvature over steps with and without BatchNorm: the quadratic form"
                     " gᵀHg / ‖g‖² of the loss Hessian along the gradient (Hessian-vector products)"
                     " and the top Hessian eigenvalue (log scale when positive over several decades)"
                     " (tests 2018 Theorem 4.2 and section 4). The paper predicts that BatchNorm"
                     " lowers the curvature along the gradient.", _BANDS),
            "curvature along the gradient (2018 section 4)"),
    },
    "claim_learning_rate": {
        "accuracy_vs_lr": _final_figure(
            ("lr",), _final_test_accuracy, "final test accuracy", True,
            "Final test accuracy against the learning rate (log scale), per variant (tests Ioffe &"
            " Szegedy 2015's claim that BatchNorm allows much higher learning rates; their BN-x5 and"
            " BN-x30 Inception models train at 5 and 30 times the baseline's rate).",
            "2015 claim 1: learning rate"),
    },
    "claim_initialisation": {
        "accuracy_vs_init_scale": _final_figure(
            ("init_scale",), _final_test_accuracy, "final test accuracy", True,
            "Final test accuracy against the scale of the initial weights (multiple of the Glorot"
            " scale, log axis), per variant (tests Ioffe & Szegedy 2015's claim that BatchNorm makes"
            " training less sensitive to initialisation; the paper gives no number).",
            "2015 claim 2: initialisation"),
    },
    "claim_regularisation": {
        "generalisation_gap": _final_figure(
            ("dropout", "lr"), _generalisation_gap, "train − test accuracy", False,
            "Generalisation gap (final train accuracy minus final test accuracy) per variant, against"
            " the dropout rate when the study varies it, else against the learning rate (tests Ioffe"
            " & Szegedy 2015's claim that BatchNorm regularises and reduces the need for dropout;"
            " Santurkar et al. report 83% test accuracy with BatchNorm vs 80% without).",
            "2015 claim 3: regularisation"),
    },
    "claim_sigmoid": {
        "accuracy": _Figure(
            _ACCURACY.make,
            _caption("Training and test accuracy over steps of sigmoid networks with and without"
                     " BatchNorm (tests Ioffe & Szegedy 2015's claim that BatchNorm makes saturating"
                     " non-linearities usable: their sigmoid Inception reaches 69.8% with BatchNorm"
                     " and never trains without it).", _BANDS),
            "2015 claim 4: sigmoid networks"),
    },
    "mnist_2015": {
        "test_accuracy": _Figure(
            partial(accuracy_curves, splits=("test",)),
            _caption("Test accuracy over steps of the 3-layer sigmoid MLP on MNIST with and without"
                     " BatchNorm (reproduces Ioffe & Szegedy 2015, Fig. 1a). The paper finds that the"
                     " BatchNorm network trains faster and reaches higher test accuracy.", _BANDS),
            "MNIST test accuracy (2015 Fig. 1a)"),
        "unit_input": _Figure(
            partial(percentile_bands, columns=("unit_p15", "unit_p50", "unit_p85"),
                    last_layer_only=True, ylabel="unit input"),
            _caption("The 15th, 50th and 85th percentiles over the batch of one unit's input to the"
                     " sigmoid in the last hidden layer, over steps, with and without BatchNorm,"
                     " averaged over seeds (reproduces Ioffe & Szegedy 2015, Fig. 1b-c). The paper"
                     " finds that without BatchNorm the distribution drifts in mean and spread over"
                     " training while with BatchNorm it stays stable.", _BANDS),
            "MNIST last-layer unit input (2015 Fig. 1b-c)"),
    },
})

FIGURES: dict[str, dict[str, str]] = {
    study: {name: figure.caption for name, figure in figures.items()}
    for study, figures in _REGISTRY.items()
}


# ---------------------------------------------------------------------------------------------
# entry point


def save_figure(fig: plt.Figure, out_png: Path) -> list[Path]:
    """Write ``out_png`` and the same-stem PDF atomically; metadata fixed so reruns are identical."""
    out_png = Path(out_png)
    written = []
    for path, metadata in ((out_png, {"Software": None}),
                           (out_png.with_suffix(".pdf"), {"CreationDate": None, "Producer": None})):
        written.append(atomic_write(path, lambda tmp, fmt=path.suffix[1:], meta=metadata:
                                    fig.savefig(tmp, format=fmt, dpi=DPI, metadata=meta)))
    plt.close(fig)
    return written


def draw(study: str, figure: str, tables_dir: Path, study_cfg: dict, out_png: Path) -> None:
    """Render ``FIGURES[study][figure]`` from ``tables_dir`` (results/tables/{study}) to PNG + PDF."""
    try:
        spec = _REGISTRY[study][figure]
    except KeyError:
        known = {s: sorted(f) for s, f in FIGURES.items()}
        raise KeyError(f"no figure {figure!r} for study {study!r}; known: {known}") from None
    ctx = _Context(study, study_cfg, _Tables(Path(tables_dir)))
    with sns.axes_style("whitegrid"), plt.rc_context({"axes.titlesize": 9, "font.size": 8}):
        fig = spec.make(ctx)
        fig.suptitle(f"{study}: {spec.title}", fontsize=10)
        save_figure(fig, out_png)
