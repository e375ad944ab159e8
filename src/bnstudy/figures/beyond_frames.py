"""The frames of the studies beyond the paper (pure pandas): Hessian spectra and spectral density,
edge of stability, 2-D loss surfaces; normalisers (Lubana et al. 2021) and scale invariance
(Arora, Li & Lyu 2019).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..tables import derived
from ..config.claim_rules import ClaimRules
from .frames import Context, Measure, panel_stub, curve_series, curves_data, resolve_scale, with_conditions


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
                pieces.append(panel_stub(row, column, "log"))
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
                pieces.append(panel_stub(label, column, scale))
                for variant in ctx.ordered(cell["variant"]):
                    series = curve_series(cell[cell["variant"] == variant], x="layer", log=scale == "log")
                    pieces.append(series.assign(row=label, column=column, variant=variant, scale=scale))
    return pd.concat(pieces, ignore_index=True)


def layer_against(ctx: Context, x: str, last: bool, y: str, label: str) -> pd.DataFrame:
    """The first (or last) normalised layer's activations-table column `y` against a run setting
    `x`, per analysed step and other condition (columns), one line per variant, log scale."""
    table = ctx.tables["activations"]
    layer = table.groupby("run")["layer"].transform("max") if last else 1
    table = table[table["layer"] == layer]
    others = [c for c in ["lr", *ctx.grid] if c != x]
    table, conditions = with_conditions(table, others)
    pieces = []
    for step in sorted(table["step"].unique()):
        for condition in conditions:
            cell = table[(table["step"] == step) & (table["condition"] == condition)]
            column = " · ".join(p for p in (f"step {int(step)}", condition) if p)
            pieces.append(panel_stub(label, column, "log"))
            for variant in ctx.ordered(cell["variant"]):
                series = curve_series(cell[cell["variant"] == variant], x=x, y=y, log=True)
                pieces.append(series.assign(row=label, column=column, variant=variant, scale="log"))
    return pd.concat(pieces, ignore_index=True)


def group_size_data(ctx: Context) -> pd.DataFrame:
    """The first normalised layer's gradient norm against the group size (x), per analysed step
    (columns): Lubana et al. find small groups inflate early layers' gradient norms."""
    return layer_against(ctx, "group_size", False, "grad_norm", "first layer ‖dL/dW₁‖")


def activation_vs_lr_data(ctx: Context) -> pd.DataFrame:
    """The last normalised layer's activation variance against the learning rate (x), per analysed
    step (columns): Bjorck et al. find that without BN large rates make deep layers' activations
    explode within the first steps."""
    return layer_against(ctx, "lr", True, "activation_var", "last layer's activation variance")


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

