"""Study tables -> figures (PNG + PDF), one drawer per figure kind of `bnstudy.catalog`.

The workflow calls ``draw(kind, study, study_cfg, tables, out_png)`` with exactly the tables
``catalog.figure_tables(kind)`` names. Nothing here imports torch, so figures can be redrawn on a
machine without the training stack.

Every kind is two layers: small pandas functions that return what the panels plot (a tidy frame;
``figure_data`` gives it, the tests assert on it), and drawing code that only draws such a frame.

Conventions shared by every figure, so that they read alike:

* seeds are the experimental unit. A curve is the mean over the seeds that did not diverge, with
  its 95% Student-t band (`bnstudy.stats.mean_ci`, the claims table's interval) at the steps where
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

from bnstudy.atomic import atomic_write  # noqa: E402
from bnstudy.catalog import figure_tables  # noqa: E402
from bnstudy.stats import mean_ci  # noqa: E402
from bnstudy.tables import StudyTables, TableError  # noqa: E402

# Index into seaborn's colour-blind palette per variant, fixed so a variant looks the same in every
# figure; the lp variants avoid the hues of batchnorm/standard they are compared with.
VARIANT_COLOURS = {"standard": 0, "batchnorm": 1, "noisy_batchnorm": 2, "standard_noise": 3,
                   "l1": 4, "l2": 7, "linf": 8}
AXIS_LABELS = {"lr": "learning rate", "init_scale": "initial weight scale (x Glorot)",
               "dropout": "dropout rate"}
PANEL_WIDTH, PANEL_HEIGHT, MIN_WIDTH, DPI = 3.4, 2.5, 6.0, 150
NO_DATA = "no data"
MIN_BAND_SEEDS = 3   # fewer seeds: their own lines, not a t band
MAX_UNITS = 4        # single units drawn per distribution panel
ACCURACY = (0.0, 1.0)
SIGNED_UNIT = (-1.0, 1.0)   # cosines, accuracy differences

TRAIN_MODE = "training mode"
EVAL_MODE = "eval mode"


# ---------------------------------------------------------------------------------------------
# context: the study's tables, config and styling


@dataclass
class Context:
    """What every drawer gets: the figure kind, the study, its config and its tables."""

    kind: str
    study: str
    study_cfg: Mapping
    tables: StudyTables

    @cached_property
    def grid(self) -> list[str]:
        return list(self.tables.grid)

    @cached_property
    def runs(self) -> pd.DataFrame:
        return self.tables.runs

    @cached_property
    def variants(self) -> list[str]:
        """Config order first (the order the paper discusses them), then anything else in the data."""
        configured = list(self.study_cfg.get("variants") or [])
        seen = [v for v in self.runs["variant"].dropna().unique() if v not in configured]
        return configured + seen

    @cached_property
    def palette(self) -> dict[str, tuple]:
        """A fixed colour per variant across all figures (standard is always the same blue)."""
        base = sns.color_palette("colorblind", 10)
        palette = {name: base[index] for name, index in VARIANT_COLOURS.items()}
        others = [v for v in self.variants if v not in palette]
        return palette | dict(zip(others, sns.color_palette("husl", len(others))))

    @cached_property
    def diverged_counts(self) -> dict[str, tuple[int, int]]:
        """variant -> (diverged runs, runs) over the whole study, for the legend."""
        runs = self.runs
        counts = runs["status"].eq("diverged").groupby(runs["variant"]).agg(["sum", "count"])
        return {variant: (int(row["sum"]), int(row["count"])) for variant, row in counts.iterrows()}

    def layers(self, frame: pd.DataFrame) -> list[int]:
        """The study's configured layers (paper numbering), else every layer in the table."""
        configured = self.study_cfg.get("layers")
        return [int(x) for x in configured] if configured else sorted(int(x) for x in frame["layer"].dropna().unique())

    def ordered(self, variants) -> list[str]:
        present = set(variants)
        return [v for v in self.variants if v in present]


# ---------------------------------------------------------------------------------------------
# what is plotted: pure pandas


def _fmt(value) -> str:
    """Numbers compactly (0.1, 1e-06), anything else as text."""
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f"{value:g}" if is_number else str(value)


def with_conditions(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Add a ``condition`` label ("lr = 0.1 · init_scale = 2") and return the labels in order.

    Conditions are what must not be averaged together; seeds within one condition are.
    """
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return frame.assign(condition=""), [""]
    combos = frame[columns].drop_duplicates().sort_values(columns, na_position="last")
    combos["condition"] = [" · ".join(f"{c} = {_fmt(v)}" for c, v in zip(columns, values))
                           for values in combos.itertuples(index=False)]
    return frame.merge(combos, on=columns, how="left"), list(combos["condition"]) or [""]


def split_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of completed runs, rows of diverged runs): a diverged run stops mid-curve, so it is
    drawn on its own instead of changing which seeds the mean is over halfway through."""
    diverged = frame["status"].eq("diverged")
    return frame[~diverged], frame[diverged]


def finite_rows(frame: pd.DataFrame, y: str, log: bool) -> pd.DataFrame:
    """Rows whose ``y`` can be drawn: finite, and positive on a log axis."""
    values = frame[y].to_numpy(dtype=float)
    keep = np.isfinite(values) & ((values > 0) if log else True)
    return frame[keep]


def seed_summary(frame: pd.DataFrame, x: str = "step", y: str = "value", log: bool = False,
                 domain: tuple[float, float] | None = None) -> pd.DataFrame:
    """Per ``x``: mean over runs (seeds), 95% t band, number of seeds and the seeds' range.

    The band is NaN where fewer than MIN_BAND_SEEDS seeds give a value or they agree exactly;
    it is clipped to ``domain``. With ``log`` the mean and band are taken over log10 values.
    """
    rows = []
    for at, group in finite_rows(frame, y, log).groupby(x, sort=True):
        values = group[y].to_numpy(dtype=float)
        values = np.log10(values) if log else values
        ci = mean_ci(values)
        low, high = (ci.low, ci.high) if ci.n >= MIN_BAND_SEEDS else (np.nan, np.nan)
        rows.append({x: at, "y": ci.mean, "low": low, "high": high, "n": ci.n,
                     "seed_min": values.min(), "seed_max": values.max()})
    summary = pd.DataFrame(rows, columns=[x, "y", "low", "high", "n", "seed_min", "seed_max"])
    if log:
        for column in ("y", "low", "high", "seed_min", "seed_max"):
            summary[column] = 10.0 ** summary[column]
    if domain is not None:
        summary["low"] = summary["low"].clip(lower=domain[0])
        summary["high"] = summary["high"].clip(upper=domain[1])
    return summary


def curve_series(frame: pd.DataFrame, x: str = "step", y: str = "value", log: bool = False,
                 domain: tuple[float, float] | None = None) -> pd.DataFrame:
    """What one variant's curve in one panel is made of, one row per point.

    ``style`` is "mean" (mean over >= MIN_BAND_SEEDS completed seeds, with low/high band),
    "seed" (one completed seed's own line, when fewer seeds completed) or "diverged" (a diverged
    run up to its last finite point); ``series`` names the line (the run id, or "mean").
    """
    columns = ["series", "style", x, "y", "low", "high", "n", "seed_min", "seed_max"]
    completed, diverged = split_runs(finite_rows(frame, y, log))
    pieces = []
    if completed["run"].nunique() >= MIN_BAND_SEEDS:
        pieces.append(seed_summary(completed, x, y, log, domain).assign(series="mean", style="mean"))
    else:
        pieces += [_run_line(run, rows, x, y, "seed") for run, rows in completed.groupby("run", sort=True)]
    pieces += [_run_line(run, rows, x, y, "diverged") for run, rows in diverged.groupby("run", sort=True)]
    pieces = [p for p in pieces if len(p)]
    return pd.concat(pieces, ignore_index=True)[columns] if pieces else pd.DataFrame(columns=columns)


def _run_line(run: str, rows: pd.DataFrame, x: str, y: str, style: str) -> pd.DataFrame:
    line = rows.sort_values(x)
    return pd.DataFrame({"series": run, "style": style, x: line[x].to_numpy(), "y": line[y].to_numpy(),
                         "low": np.nan, "high": np.nan, "n": 1,
                         "seed_min": line[y].to_numpy(), "seed_max": line[y].to_numpy()})


@dataclass(frozen=True)
class Measure:
    """One row of panels in a curves figure: a column of a table, optionally filtered."""

    label: str                                    # the row's y label
    table: str
    column: str
    where: tuple[str, object] | None = None       # (column, value) rows must have
    scale: str = "linear"                         # linear, log, or auto (log when > 2 decades)
    domain: tuple[float, float] | None = None     # where the measure lives; bands are clipped to it


def resolve_scale(values: pd.Series, scale: str) -> str:
    """"log" or "linear": "auto" means log when all values are positive and span > 2 decades;
    "log" falls back to linear when nothing is positive (nothing could be drawn)."""
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    positive = finite[finite > 0]
    if scale == "auto":
        spans_decades = len(positive) == len(finite) > 0 and positive.max() > 100 * positive.min()
        return "log" if spans_decades else "linear"
    return "log" if scale == "log" and len(positive) else "linear"


def _panel(row: str, column: str, scale: str) -> pd.DataFrame:
    """A placeholder row (no style) that keeps a panel in the layout even when nothing in it can
    be drawn: the panel then says "no data" instead of vanishing."""
    return pd.DataFrame({"row": [row], "column": [column], "scale": [scale]})


def curves_data(ctx: Context, measures: Sequence[Measure], by_layer: bool = False) -> pd.DataFrame:
    """Every point of a curves figure: rows = measures, columns = conditions (layer x lr x grid
    when ``by_layer``), one `curve_series` per variant in each panel."""
    pieces = []
    for measure in measures:
        frame = ctx.tables[measure.table]
        if measure.where is not None:
            frame = frame[frame[measure.where[0]] == measure.where[1]]
        frame = frame.assign(value=frame[measure.column].astype(float))
        scale = resolve_scale(frame["value"], measure.scale)
        frame, conditions = with_conditions(frame, ["lr", *ctx.grid])
        for layer in (ctx.layers(frame) if by_layer else [None]):
            rows = frame if layer is None else frame[frame["layer"] == layer]
            for condition in conditions:
                cell = rows[rows["condition"] == condition]
                column = " · ".join(p for p in ([f"layer {layer}"] if by_layer else []) + [condition] if p)
                pieces.append(_panel(measure.label, column, scale))
                for variant in ctx.ordered(cell["variant"]):
                    series = curve_series(cell[cell["variant"] == variant], log=scale == "log",
                                          domain=measure.domain)
                    pieces.append(series.assign(row=measure.label, column=column, variant=variant,
                                                scale=scale))
    return pd.concat(pieces, ignore_index=True)


ACCURACY_ROWS = {
    "train_batches": Measure(f"train accuracy\n({TRAIN_MODE})", "eval", "accuracy",
                             ("split", "train_batches"), domain=ACCURACY),
    "train": Measure(f"train accuracy\n({EVAL_MODE})", "eval", "accuracy", ("split", "train"), domain=ACCURACY),
    "test": Measure(f"test accuracy\n({EVAL_MODE})", "eval", "accuracy", ("split", "test"), domain=ACCURACY),
}

CURVES: dict[str, tuple[list[Measure], bool]] = {  # kind -> (rows, by layer)
    "accuracy": ([ACCURACY_ROWS["train_batches"], ACCURACY_ROWS["test"]], False),
    "train_accuracy": ([ACCURACY_ROWS["train_batches"], ACCURACY_ROWS["train"]], False),
    "test_accuracy": ([ACCURACY_ROWS["test"]], False),
    "train_loss": ([Measure("training loss", "train", "loss", scale="log")], False),
    "moment_changes": ([Measure("|μ(t+1) − μ(t)|\nmean over units", "layers", "unit_mean_change", scale="log"),
                        Measure("|σ²(t+1) − σ²(t)|\nmean over units", "layers", "unit_var_change", scale="log")],
                       True),
    "ics": ([Measure("‖G − G′‖₂", "ics", "l2_diff", scale="log"),
             Measure("cos(G, G′)", "ics", "cosine", domain=SIGNED_UNIT)], True),
    "curvature": ([Measure("gᵀHg / ‖g‖²", "curvature", "grad_quadratic", scale="auto"),
                   Measure("top Hessian eigenvalue", "curvature", "top_eigenvalue", scale="auto")], False),
}
EIGENVALUE_ROW = CURVES["curvature"][0][1].label


def as_bool(values: pd.Series) -> pd.Series:
    """A CSV boolean column (True/False, 1/0, true/false; missing = False) as bools."""
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "1.0", "yes"])


def unconverged_points(ctx: Context) -> pd.DataFrame:
    """Each run's top-eigenvalue points whose power iteration did not converge (flagged, kept in the mean)."""
    curvature, conditions = with_conditions(ctx.tables["curvature"], ["lr", *ctx.grid])
    flagged = curvature[~as_bool(curvature["converged"])]
    return pd.DataFrame({"row": EIGENVALUE_ROW, "column": flagged["condition"], "variant": flagged["variant"],
                         "series": flagged["run"], "style": "unconverged", "step": flagged["step"],
                         "y": flagged["top_eigenvalue"].astype(float)})


def curvature_data(ctx: Context) -> pd.DataFrame:
    """The curvature curves plus one "unconverged" point per flagged eigenvalue."""
    data = curves_data(ctx, *CURVES["curvature"])
    flagged = unconverged_points(ctx)
    scales = data.groupby("row")["scale"].first()
    flagged = flagged.assign(scale=scales.get(EIGENVALUE_ROW, "linear"))
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
        row = "no layers" if layer is None else f"layer {layer}"
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


def range_band(frame: pd.DataFrame, low: str, high: str) -> pd.DataFrame:
    """Per step: the seed-mean of each run's minimum and maximum over eta (the paper's band);
    a diverged run gets its own band, so the mean is over one set of seeds throughout."""
    pieces = []
    completed, diverged = split_runs(frame.dropna(subset=[high]))
    if len(completed):
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
            pieces.append(_panel(condition, label, scale))
            for variant in ctx.ordered(cell["variant"]):
                rows = cell[cell["variant"] == variant]
                series = (curve_series(rows, y=high, log=scale == "log") if low is None
                          else range_band(rows, low, high))
                pieces.append(series.assign(row=condition, column=label, variant=variant, scale=scale))
    return pd.concat(pieces, ignore_index=True)


FINAL = {  # kind -> (x candidates, y label, value of a runs.csv row, domain, log x)
    "accuracy_vs_lr": (("lr",), f"final test accuracy\n({EVAL_MODE})", "test", ACCURACY, True),
    "accuracy_vs_init_scale": (("init_scale",), f"final test accuracy\n({EVAL_MODE})", "test", ACCURACY, True),
    "accuracy_vs_dropout": (("dropout",), f"final test accuracy\n({EVAL_MODE})", "test", ACCURACY, False),
    "generalisation_gap": (("dropout", "lr"), f"final train − test accuracy\n({EVAL_MODE})", "gap",
                           SIGNED_UNIT, False),
}


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


def final_data(ctx: Context) -> pd.DataFrame:
    """A final metric (runs.csv) against a run setting; columns = the other conditions."""
    candidates, _, which, domain, _ = FINAL[ctx.kind]
    x = final_x(ctx, candidates)
    runs = ctx.runs.assign(value=lambda r: final_value(r, which))
    runs, conditions = with_conditions(runs, [c for c in ["lr", *ctx.grid] if c != x])
    pieces = []
    for condition in conditions:
        cell = runs[runs["condition"] == condition]
        pieces.append(_panel("", condition, "linear"))
        for variant in ctx.ordered(cell["variant"]):
            points = final_points(cell[cell["variant"] == variant], x, domain)
            pieces.append(points.assign(row="", column=condition, variant=variant, x=points[x]))
    columns = ["row", "column", "variant", "series", "style", "x", "y", "low", "high", "n"]
    return pd.concat(pieces, ignore_index=True).reindex(columns=columns)


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
                  domains: Mapping[str, tuple] | None = None, measures_in_columns: bool = False) -> plt.Figure:
    """The drawing shared by the curves-over-steps figures: one panel per (row, column) of
    ``data``, one colour per variant, "no data" where a panel has nothing.

    Rows are measures and columns conditions (titles), unless ``measures_in_columns`` (the
    landscape: rows are conditions, every panel's y label names its column's measure).
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


def curves_figure(ctx: Context, data: pd.DataFrame) -> plt.Figure:
    """Rows: measures; columns: conditions (x layer); x: step; hue: variant."""
    measures, _ = CURVES[ctx.kind]
    fig = panels_figure(ctx, data, domains={m.label: m.domain for m in measures})
    entries = style_entries(data)
    if ctx.kind == "curvature":
        converged = as_bool(ctx.tables["curvature"]["converged"])
        flagged, total = int((~converged).sum()), len(converged)
        if flagged:
            marker = Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor=GREY, linestyle="")
            entries.append((marker, f"eigenvalue whose power iteration did not converge: {flagged} of {total}"))
        else:
            entries.append((Line2D([], [], linestyle=""), f"power iteration converged for all {total} eigenvalues"))
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
    fig = panels_figure(ctx, data, sharey="col", measures_in_columns=True)
    legend(fig, ctx, data["variant"].dropna(), style_entries(data))
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
        ax.set_xticks(xs, [_fmt(v) for v in xs])
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
    return Context(kind, study, study_cfg, StudyTables(tables, study_cfg))


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
