"""Study tables -> the tidy frames the figures plot (pure pandas, no matplotlib, no torch).

Each figure kind is two layers: a function here that returns what its panels plot (one row per
plotted point, labelled by panel `row` and `column`, `variant` and, for curves, `series` and
`style`), and drawing code in `bnstudy.figures.draw` that only draws such a frame. The tests assert on
these frames; `bnstudy.figures.draw.figure_data(kind, ...)` gives the frame of any kind.

Conventions (why the figures read alike) are in `bnstudy.figures.draw`' docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from ..tables import derived
from ..tables.stats import mean_ci
from ..tables.files import StudyTables, TableError
from ..claims.rules import ClaimRules
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


def _panel(row: str, column: str, scale: str) -> pd.DataFrame:
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
             Measure("‖G − G′‖₂ / ‖G‖₂\n(scale-free)", "ics", "l2_diff", scale="log", divide_by="grad_norm"),
             Measure("cos(G, G′)", "ics", "cosine", domain=SIGNED_UNIT)], True),
    "curvature": ([Measure("gᵀHg / ‖g‖²", "curvature", "grad_quadratic", scale="auto"),
                   Measure("largest Hessian\neigenvalue", "curvature", "top_eigenvalue", scale="auto"),
                   Measure("smallest Hessian\neigenvalue", "curvature", "bottom_eigenvalue", scale="auto")], False),
}
EIGENVALUE_ROWS = {"top_eigenvalue": CURVES["curvature"][0][1].label,
                   "bottom_eigenvalue": CURVES["curvature"][0][2].label}


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
    data = curves_data(ctx, *CURVES["curvature"])
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
            pieces.append(_panel(condition, label, scale))
            for variant in ctx.ordered(cell["variant"]):
                rows = cell[cell["variant"] == variant]
                series = (curve_series(rows, y=high, log=scale == "log") if low is None
                          else range_band(rows, low, high, log=scale == "log"))
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
# the studies beyond the paper: Hessian spectra, edge of stability, 2-D surfaces


SPECTRUM_ROWS = [
    Measure("largest Hessian\neigenvalue", "spectrum_summary", "lambda_max", scale="auto"),
    Measure("outlier group's separation\nλ_k / λ_k+1", "outliers", "gap", scale="log"),
    Measure("share of ‖g‖² in the\noutlier group's span", "outliers", "gradient_share", domain=(0.0, 1.0)),
    Measure("trace of the Hessian\n(Hutchinson)", "spectrum_summary", "trace", scale="auto"),
    Measure("smallest Hessian\neigenvalue", "spectrum_summary", "lambda_min", scale="auto"),
]


def modes(frame: pd.DataFrame) -> list[str]:
    """["bn_mode"] when a Hessian table holds more than one mode: their rows are separate panels."""
    return ["bn_mode"] if "bn_mode" in frame.columns and frame["bn_mode"].nunique() > 1 else []


def spectrum_data(ctx: Context) -> pd.DataFrame:
    """λ_max, the outlier group's separation and its share of the gradient (`derived.outlier_groups`,
    as the claim finds them), the trace and λ_min against step, a column per bn_mode where the study
    analyses both; steps where an eigenvalue search did not converge are marked on λ_max."""
    spectrum = ctx.tables["spectrum"]
    rules = ClaimRules().overridden(ctx.study_cfg.get("claim_rules"))
    summary = derived.spectrum_summary(spectrum)
    frames = {"spectrum_summary": summary, "outliers": derived.outlier_groups(spectrum, rules.classes)}
    rows = [m for m in SPECTRUM_ROWS if frames[m.table][m.column].notna().any()]
    data = curves_data(ctx, rows, frames=frames, conditions=modes(spectrum))
    flagged, _ = with_conditions(summary[~summary["converged"]], ["lr", *ctx.grid, *modes(spectrum)])
    marks = pd.DataFrame({"row": SPECTRUM_ROWS[0].label, "column": flagged["condition"], "variant": flagged["variant"],
                          "series": flagged["run"], "style": "unconverged", "step": flagged["step"],
                          "y": flagged["lambda_max"].astype(float)})
    return pd.concat([data, marks], ignore_index=True)


EOS_ROWS = [Measure("training loss\n(full batch)", "train", "loss", scale="log"),
            Measure("largest Hessian eigenvalue\n(sharpness)", "eos", "sharpness", scale="log"),
            Measure("lr × sharpness\n(every analysed step)", "eos", "ratio", scale="log")]


def eos_data(ctx: Context) -> pd.DataFrame:
    """Training loss, sharpness and lr x sharpness against step per learning rate: 2/lr drawn in
    the sharpness row and 2 in the ratio row ("reference" lines: gradient descent on a quadratic
    diverges above them), every analysed point of every run drawn in the ratio row, the part of
    each run the claim reads (its window) marked, unconverged points left out and counted."""
    rules = ClaimRules().overridden(ctx.study_cfg.get("claim_rules"))
    eos = derived.eos_window(ctx.tables["sharpness"], ctx.tables["train"], rules.eos_loss_fraction)
    data = curves_data(ctx, EOS_ROWS, frames={"eos": eos})
    lines = []
    for row, level in ((EOS_ROWS[1].label, None), (EOS_ROWS[2].label, 2.0)):
        for column, cell in data[(data["row"] == row) & data["style"].notna()].groupby("column"):
            lr = float(column.split("lr = ")[1].split(" ")[0])  # conditions start with the lr
            steps = cell["step"].dropna()
            lines.append(pd.DataFrame({"row": row, "column": column, "variant": "2/lr", "series": "2/lr",
                                       "style": "reference", "step": [steps.min(), steps.max()],
                                       "y": 2.0 / lr if level is None else level, "scale": "log"}))
    eos, _ = with_conditions(eos, ["lr", *ctx.grid])
    for (column, variant, run), points in eos.groupby(["condition", "variant", "run"]):
        window = points["in_window"].astype(bool)
        for style, part in (("points", points[~window]), ("window-points", points[window])):
            if len(part):
                lines.append(pd.DataFrame({"row": EOS_ROWS[2].label, "column": column, "variant": variant,
                                           "series": run, "style": style, "step": part["step"].to_numpy(),
                                           "y": part["ratio"].to_numpy(), "scale": "log"}))
    return pd.concat([data, *lines], ignore_index=True)


ROWS_OF = {"hessian_spectrum": SPECTRUM_ROWS, "edge_of_stability": EOS_ROWS}  # custom-data curves figures
DENSITY_POINTS = 10_000  # plus every node itself: a spike is sampled at its peak, wherever the grid falls
DENSITY_VARIANCE = 1e-5  # Ghorbani et al. / PyHessian: kernel variance 1e-5 x max(1, spectrum range)


def density_data(ctx: Context) -> pd.DataFrame:
    """The smoothed spectral density per analysed step (rows) and condition (columns), one curve
    per variant: the mean over seeds of each seed's density (its starts pooled)."""
    density, conditions = with_conditions(ctx.tables["density"], ["lr", *ctx.grid, *modes(ctx.tables["density"])])
    pooled = derived.pooled_quadrature(density)
    pieces = []
    for step in sorted(pooled["step"].unique()):
        for condition in conditions:
            cell = pooled[(pooled["step"] == step) & (pooled["condition"] == condition)]
            row, column = f"step {int(step)}", condition
            if cell.empty:
                pieces.append(_panel(row, column, "log"))
                continue
            low, high = float(cell["node"].min()), float(cell["node"].max())
            spread = max(high - low, 1e-12)
            grid = np.union1d(np.linspace(low - 0.05 * spread, high + 0.05 * spread, DENSITY_POINTS),
                              cell["node"].to_numpy(dtype=float))
            sigma = (DENSITY_VARIANCE * max(1.0, spread)) ** 0.5
            for variant in ctx.ordered(cell["variant"]):
                runs = cell[cell["variant"] == variant]
                curves = [derived.density_curve(r["node"], r["weight"], grid, sigma)
                          for _, r in runs.groupby("run")]
                pieces.append(pd.DataFrame({"row": row, "column": column, "variant": variant, "series": "mean",
                                            "style": "density", "x": grid, "y": np.mean(curves, axis=0),
                                            "n": len(curves), "scale": "log"}))
    return pd.concat(pieces, ignore_index=True)


def surface_data(ctx: Context) -> pd.DataFrame:
    """The 2-D surface of the lowest seed per variant and analysed step (contours), and the
    basin radius per step over seeds (`derived.basin_radii`)."""
    surface = ctx.tables["surface"]
    surface, conditions = with_conditions(surface, ["lr", *ctx.grid])
    pieces = []
    for step in sorted(surface["step"].unique()):
        for condition in conditions:
            for variant in ctx.variants:
                cell = surface[(surface["step"] == step) & (surface["condition"] == condition)
                               & (surface["variant"] == variant)]
                column = " · ".join(p for p in (variant, condition) if p)
                if cell.empty:
                    continue
                seed = cell["seed"].min()
                cell = cell[cell["seed"] == seed]
                pieces.append(cell.assign(row=f"step {int(step)}", column=column, style="contour",
                                          series=cell["run"]))
    rules = ClaimRules().overridden(ctx.study_cfg.get("claim_rules"))
    radii, conditions = with_conditions(derived.basin_radii(ctx.tables["surface"], rules.basin_rise), ["lr", *ctx.grid])
    for condition in conditions:
        cell = radii[radii["condition"] == condition]
        for variant in ctx.ordered(cell["variant"]):
            series = curve_series(cell[cell["variant"] == variant], y="radius")
            pieces.append(series.assign(row="basin radius", column=condition, variant=variant, scale="linear"))
    keep = ["row", "column", "variant", "series", "style", "x", "y", "loss", "step", "low", "high", "n",
            "seed_min", "seed_max", "scale"]
    return pd.concat(pieces, ignore_index=True).reindex(columns=keep)


# ---------------------------------------------------------------------------------------------
# normalisers (Lubana et al. 2021) and scale invariance (Arora, Li & Lyu 2019)


LAYER_ROWS = [("cosine_similarity", "mean cosine similarity\nbetween samples", "linear"),
              ("stable_rank", "stable rank of\nthe activations", "log"),
              ("grad_norm", "‖dL/dWᵢ‖", "log"),
              ("activation_var", "activation variance", "log")]


def layer_measures_data(ctx: Context) -> pd.DataFrame:
    """Per-layer measures against depth (x = layer), one column per analysed step and condition."""
    table, conditions = with_conditions(ctx.tables["activations"], ["lr", *ctx.grid])
    pieces = []
    for column_name, label, scale in LAYER_ROWS:
        frame = table.assign(value=table[column_name].astype(float))
        scale = resolve_scale(frame["value"], scale)
        for step in sorted(frame["step"].unique()):
            for condition in conditions:
                cell = frame[(frame["step"] == step) & (frame["condition"] == condition)]
                column = " · ".join(p for p in (f"step {int(step)}", condition) if p)
                pieces.append(_panel(label, column, scale))
                for variant in ctx.ordered(cell["variant"]):
                    series = curve_series(cell[cell["variant"] == variant], x="layer", log=scale == "log")
                    pieces.append(series.assign(row=label, column=column, variant=variant, scale=scale))
    return pd.concat(pieces, ignore_index=True)


def group_size_data(ctx: Context) -> pd.DataFrame:
    """The first normalised layer's gradient norm against the group size (x), per analysed step
    (columns): Lubana et al. find small groups inflate early layers' gradient norms."""
    table = ctx.tables["activations"]
    table = table[table["layer"] == 1]
    others = [c for c in ["lr", *ctx.grid] if c != "group_size"]
    table, conditions = with_conditions(table, others)
    pieces = []
    for step in sorted(table["step"].unique()):
        for condition in conditions:
            cell = table[(table["step"] == step) & (table["condition"] == condition)]
            column = " · ".join(p for p in (f"step {int(step)}", condition) if p)
            pieces.append(_panel("first layer ‖dL/dW₁‖", column, "log"))
            for variant in ctx.ordered(cell["variant"]):
                series = curve_series(cell[cell["variant"] == variant], x="group_size", y="grad_norm", log=True)
                pieces.append(series.assign(row="first layer ‖dL/dW₁‖", column=column, variant=variant, scale="log"))
    return pd.concat(pieces, ignore_index=True)


WEIGHT_ROWS = [Measure("‖wᵢ‖² (dotted: ‖w₀‖² + lr² Σ‖g‖²)", "weights", "w_sq", scale="auto"),
               Measure("effective learning rate\nlr / ‖wᵢ‖²", "weights", "effective_lr", scale="log"),
               Measure("largest |cos(w, g)|\nover filters", "weights", "grad_cos", scale="log"),
               Measure("median |cos(w, g)|\nover filters", "weights", "grad_cos_p50", scale="log")]


def weight_norm_data(ctx: Context) -> pd.DataFrame:
    """Per configured layer and condition: the measured ||w||^2 with the scale-invariance
    prediction drawn beside it (style "prediction"), the effective learning rate and |cos(w, g)|."""
    layers = ctx.tables["layers"].dropna(subset=["weight_norm"])
    weights = derived.weight_norms(layers)
    data = curves_data(ctx, WEIGHT_ROWS, by_layer=True, frames={"weights": weights})
    predicted = curves_data(ctx, [dataclasses.replace(WEIGHT_ROWS[0], column="w_sq_predicted")], by_layer=True,
                            frames={"weights": weights})
    predicted = predicted[predicted["style"].isin(["mean", "seed"])].assign(style="prediction", low=np.nan,
                                                                           high=np.nan)
    return pd.concat([data, predicted], ignore_index=True)


ROWS_OF.update({"weight_norm": WEIGHT_ROWS})
