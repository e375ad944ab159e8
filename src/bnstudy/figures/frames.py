"""Study tables -> the tidy frames the figures plot (pure pandas, no matplotlib, no torch).

Each figure kind is two layers: a function that returns what its panels plot (one row per
plotted point, labelled by panel `row` and `column`, `variant` and, for curves, `series` and
`style`), and drawing code in `bnstudy.figures` (`curves`, `snapshots`) that only draws such a
frame. This module holds what every frame is built from (the study's `Context`, seed summaries,
curve series, `Measure`s and `curves_data`); the kinds' functions are in `paper_frames` and
`beyond_frames`. The tests assert on these frames; `bnstudy.figures.draw.figure_data(kind, ...)`
gives the frame of any kind.

Conventions (why the figures read alike) are in `bnstudy.figures.draw`' docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from ..tables.stats import mean_ci
from ..files import StudyTables, grid_columns
from ..config.claim_rules import ClaimRules
from ..tables.view import StudyView


MIN_BAND_SEEDS = 3   # fewer seeds: their own lines, not a t band
MAX_UNITS = 4        # single units drawn per distribution panel
ACCURACY = (0.0, 1.0)
SIGNED_UNIT = (-1.0, 1.0)   # cosines, accuracy differences
TRAIN_MODE = "training mode"
EVAL_MODE = "eval mode"


# ---------------------------------------------------------------------------------------------
# context: the study's tables and config


class Context(StudyView):
    """What every drawer gets: the study's view (`bnstudy.tables.view.StudyView`, shared with the claims)
    and the figure kind it draws."""

    def __init__(self, kind: str, study: str, study_cfg: Mapping, tables: StudyTables):
        super().__init__(tables, study)
        self.kind = kind
        self.study_cfg = study_cfg

    @cached_property
    def early_end(self) -> float:
        """The step where the claims' early window ends (`ClaimRules.early_fraction` of the longest run)."""
        rules = ClaimRules().overridden(self.study_cfg.get("claim_rules"))
        return rules.early_fraction * float(self.runs["steps"].max())


class HuedTables(StudyTables):
    """A study's tables with one grid setting moved into the variant ("batchnorm · train_only =
    bn_affine"): its values become lines of their own colour in one panel instead of panel
    columns, for a figure whose point is to compare them (Frankle et al.'s three kinds of
    training). Every table with the setting's column is relabelled, so the colours, the order,
    the legend's diverged counts and the panels all follow without knowing of it."""

    def __init__(self, tables: StudyTables, key: str):
        cfg, column = tables.study_cfg, grid_columns(tables.study_cfg)[key]
        values = (cfg.get("grid") or {})[key]
        labels = [hue_label(v, column, value) for v in cfg.get("variants") or [] for value in values]
        super().__init__(tables.paths, {**cfg, "variants": labels,
                                        "grid": {k: v for k, v in cfg["grid"].items() if k != key}})
        self.column = column

    def __getitem__(self, name: str):
        frame = super().__getitem__(name)
        if self.column in frame.columns:
            frame["variant"] = [hue_label(v, self.column, value)
                                for v, value in zip(frame["variant"], frame[self.column])]
        return frame


def hue_label(variant: str, column: str, value) -> str:
    return f"{variant} · {column} = {format_value(value)}"


def hued(ctx: Context, key: str) -> Context:
    """The same figure's context with the grid setting `key` as the hue (`HuedTables`)."""
    return type(ctx)(ctx.kind, ctx.study, ctx.study_cfg, HuedTables(ctx.tables, key))


# ---------------------------------------------------------------------------------------------
# what is plotted: pure pandas


def format_value(value) -> str:
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
    combos["condition"] = [" · ".join(f"{c} = {format_value(v)}" for c, v in zip(columns, values))
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
    """One row of panels in a curves figure: a column of a table (or a quotient of two),
    optionally filtered."""

    label: str                                    # the row's y label
    table: str
    column: str
    where: tuple[str, object] | None = None       # (column, value) rows must have
    scale: str = "linear"                         # linear, log, or auto (log when > 2 decades)
    domain: tuple[float, float] | None = None     # where the measure lives; bands are clipped to it
    divide_by: str | None = None                  # plot column / divide_by (a scale-free form)

    def values(self, frame: pd.DataFrame) -> pd.Series:
        values = frame[self.column].astype(float)
        return values / frame[self.divide_by].astype(float) if self.divide_by else values


def resolve_scale(values: pd.Series, scale: str) -> str:
    """"log" or "linear": "auto" means log when all values are positive and span > 2 decades;
    "log" falls back to linear when nothing is positive (nothing could be drawn)."""
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    positive = finite[finite > 0]
    if scale == "auto":
        spans_decades = len(positive) == len(finite) > 0 and positive.max() > 100 * positive.min()
        return "log" if spans_decades else "linear"
    return "log" if scale == "log" and len(positive) else "linear"


def panel_stub(row: str, column: str, scale: str) -> pd.DataFrame:
    """A placeholder row (no style) that keeps a panel in the layout even when nothing in it can
    be drawn: the panel then says "no data" instead of vanishing."""
    return pd.DataFrame({"row": [row], "column": [column], "scale": [scale]})


def curves_data(ctx: Context, measures: Sequence[Measure], by_layer: bool = False,
                frames: Mapping[str, pd.DataFrame] | None = None, conditions: Sequence[str] = ()) -> pd.DataFrame:
    """Every point of a curves figure: rows = measures, columns = conditions (layer x lr x grid
    when ``by_layer``), one `curve_series` per variant in each panel. `frames` supplies derived
    tables (e.g. `derived.spectrum_summary`) by the name a measure's `table` gives; `conditions`
    adds columns that must not be averaged together (e.g. bn_mode) to lr and the grid."""
    pieces = []
    for measure in measures:
        frame = (frames or {}).get(measure.table)
        frame = ctx.tables[measure.table] if frame is None else frame
        if measure.where is not None:
            frame = frame[frame[measure.where[0]] == measure.where[1]]
        frame = frame.assign(value=measure.values(frame))
        scale = resolve_scale(frame["value"], measure.scale)
        frame, labels = with_conditions(frame, ["lr", *ctx.grid, *conditions])
        for layer in (ctx.layers(frame) if by_layer else [None]):
            rows = frame if layer is None else frame[frame["layer"] == layer]
            for condition in labels:
                cell = rows[rows["condition"] == condition]
                column = " · ".join(p for p in ([ctx.layer_label(layer)] if by_layer else []) + [condition] if p)
                pieces.append(panel_stub(measure.label, column, scale))
                for variant in ctx.ordered(cell["variant"]):
                    series = curve_series(cell[cell["variant"] == variant], log=scale == "log",
                                          domain=measure.domain)
                    pieces.append(series.assign(row=measure.label, column=column, variant=variant,
                                                scale=scale))
    return pd.concat(pieces, ignore_index=True)
