"""The loss landscape: Santurkar et al. 2018's explanation of BN (section 3.2, Fig. 4), the same
measures for every normaliser (section 3.3; Lubana et al. 2021), and Li et al. 2018's basin."""

from __future__ import annotations

import pandas as pd

from ...tables import derived
from ...tables.view import StudyView
from ..measures import by_condition
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules
from ..windows import in_window, mean_per_run
from .ics import PAIRING, over_windows


def landscape_per_step(data: StudyView, variant: str, rules: ClaimRules, window: str) -> pd.DataFrame:
    """Per run and step along the gradient (section 3.2): the loss range over eta, the largest
    gradient change ||g - grad L(W - eta g)|| over eta, and the effective beta (the max over eta)."""
    landscape = in_window(data.table("landscape"), window, rules, data.runs)
    landscape = landscape[(landscape["variant"] == variant) & (landscape["direction"] == "gradient")]
    grouped = landscape.groupby(["run", "step"])
    return pd.DataFrame({"loss_range": grouped["loss"].max() - grouped["loss"].min(),
                         "grad_change": grouped["grad_diff"].max(),
                         "beta": grouped["beta"].max()}).reset_index()


def landscape_log(column: str):
    """window -> mean over the window's steps of log10 of a landscape quantity (`landscape_per_step`)."""
    def in_window_of(window: str):
        def metric(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
            per_step = landscape_per_step(data, variant, rules, window)
            return by_condition(mean_per_run(per_step, per_step[column], log=True), data)
        return metric
    return in_window_of


def landscape_rows(pairing: str, figure: str = "Fig. 4") -> tuple[Row, ...]:
    """Fig. 4's three quantities, each a row over training and at initialisation."""
    return over_windows(
        Row("loss_range", f"{figure}a: log10 of the loss range (max - min over eta of L(W - eta g)), {{steps}};"
            f" {pairing} (log10 ratio)", landscape_log("loss_range"), "below"),
        Row("grad_change", f"{figure}b: log10 of the largest gradient change ||g - grad L(W - eta g)|| over"
            f" eta, {{steps}}; {pairing} (log10 ratio)", landscape_log("grad_change"), "below"),
        Row("beta", f"{figure}c: log10 effective beta-smoothness (max over eta of ||g - grad L(W - eta g)|| /"
            f" ||eta g||), {{steps}}; {pairing} (log10 ratio)", landscape_log("beta"), "below"))


def log_basin_radius(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """log10 of the basin radius (derived.basin_radii: where the loss rises basin_rise above its
    centre) at each run's last analysed step; a radius beyond the grid counts as the grid's edge."""
    surface = data.table("surface")
    radii = derived.basin_radii(surface[surface["variant"] == variant], rules.basin_rise)
    last = radii[radii["step"] == radii.groupby("run")["step"].transform("max")]
    return by_condition(mean_per_run(last, last["radius"], log=True), data)


def radius_capped(data: StudyView, rules: ClaimRules) -> str | None:
    """Say so when a radius reached the grid's edge (the measurement is then a lower bound)."""
    surface = data.table("surface")
    last = surface[surface["step"] == surface.groupby("run")["step"].transform("max")]
    capped = derived.basin_radii(last, rules.basin_rise)["capped"]
    if capped.any():
        return (f"Li et al. state no finding for BN; {int(capped.sum())} of {len(capped)} runs' radius reached the"
                f" grid's edge (a lower bound: widen surface.span)")
    return None


CLAIMS = (
    Claim(
        "smoother_landscape", "BN smooths the loss landscape", "2018",
        "2018 (Figs. 4, 10): without BN the loss varies widely early, gradient predictiveness is"
        " ~2 orders of magnitude worse early on, beta-smoothness is consistently worse",
        landscape_rows(PAIRING), findings=(("2018", SUPPORTED),), tables=("train", "landscape")),
    Claim(
        "smoother_than_none", "This normaliser smooths the loss landscape", "2018 / Lubana 2021",
        "2018 (section 3.3): lp normalisations smooth the landscape like BN; Lubana et al. 2021 compare"
        " LayerNorm, GroupNorm, InstanceNorm and WeightNorm by their activations and gradients",
        landscape_rows("the variant minus standard, paired by seed"), findings=(("2018", SUPPORTED),),
        variants=("standard", "standard"), per_variant=True, tables=("train", "landscape")),
    Claim(
        "wider_basin", "BN widens the basin around the trained weights", "Li 2018 (method)",
        "Li et al. 2018 measure surfaces with filter-normalised directions and find skip connections,"
        " not BN, decide how chaotic they are: no stated finding for BN",
        (Row("radius", "log10 of the basin radius (mean distance along the four filter-normalised half-axes at"
             " which the loss first rises claim_rules.basin_rise above its centre value; the grid's edge where it"
             " never does, a lower bound) at the last analysed step, losses as the study's surface.bn_mode states"
             " (Li et al.: running statistics); " + PAIRING + " (log10 ratio)", log_basin_radius, "above",
             measured_only=radius_capped),), tables=("train", "surface")),
)
