"""Bjorck, Gomes, Selman & Weinberger 2018 ("Understanding Batch Normalization"): BN's gains come
mostly from the larger learning rates it permits; at the same learning rate the advantage largely
disappears, and without BN large rates make the activations of deep layers explode."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...tables.view import StudyView
from ..measures import accuracy_or_chance, at_best_lr, indexed, keyed
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules


def advantage_at_matched_lr(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and grid point): BN's test-accuracy advantage over standard at the standard
    network's best lr, minus its advantage when each is at its own best lr (diverged = chance; the
    best lr of each variant chosen by the mean over seeds)."""
    accuracy = accuracy_or_chance(data.runs, "final_test_accuracy", rules)
    keys = data.condition_keys(exclude=["lr"])
    own = {v: at_best_lr(data, v, accuracy).set_index(keys)["value"] for v in (variant, "standard")}
    standard_best = at_best_lr(data, "standard", accuracy)[["lr", *[k for k in keys if k != "seed"]]].drop_duplicates()
    runs = data.runs.assign(value=accuracy)
    treated = runs[runs["variant"] == variant].merge(standard_best, on=list(standard_best.columns))
    matched = treated.set_index(keys)["value"] - own["standard"]
    return (matched - (own[variant] - own["standard"])).dropna()


def same_best_lr(data: StudyView, rules: ClaimRules) -> str | None:
    """The advantage row is a measurement when BN's best lr on the grid is the standard network's
    at every grid point: the matched lr is then BN's own, the measure is zero by construction, and
    the grid shows no larger rate for BN's advantage to come from."""
    accuracy = accuracy_or_chance(data.runs, "final_test_accuracy", rules)
    grid = [k for k in data.grid if k in data.runs.columns]
    best = {v: at_best_lr(data, v, accuracy) for v in ("batchnorm", "standard")}
    lrs = {v: frame[grid + ["lr"]].drop_duplicates() for v, frame in best.items()}
    if any(frame.empty for frame in lrs.values()) or len(lrs["batchnorm"].merge(lrs["standard"])) < len(lrs["standard"]):
        return None
    gain = best["batchnorm"]["value"].mean() - best["standard"]["value"].mean()
    shared = ", ".join(f"{lr:g}" for lr in sorted(lrs["standard"]["lr"].unique()))
    return (f"batchnorm's best learning rate on the grid is standard's ({shared}; means over seeds), so the "
            f"advantage at the matched lr is the advantage at each one's best by construction (BN's there: "
            f"{gain:+.3f}); the grid shows no larger rate for BN's advantage to come from")


def first_checkpoint(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first analysed step after initialisation."""
    later = table[table["step"] > 0]
    return later[later["step"] == later["step"].min()]


def activation_lr_slope(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per seed (and grid point): the slope of log10 of the last normalised layer's activation
    variance (block output) at the first analysed step after 0 against log10 lr."""
    table = data.table("activations")
    table = first_checkpoint(table[table["variant"] == variant])
    last = table[table["layer"] == table.groupby("run")["layer"].transform("max")]
    runs = data.runs.set_index("run").loc[last["run"]].reset_index()
    values = indexed(runs, last["activation_var"].to_numpy(dtype=float), data.condition_keys())
    keys = data.condition_keys(exclude=["lr"])
    frame = values.reset_index(name="value")
    out = {}
    for key, group in frame.groupby(keys):
        group = group[np.isfinite(group["value"]) & (group["value"] > 0)]
        if group["lr"].nunique() >= 2:
            out[key if isinstance(key, tuple) else (key,)] = float(
                np.polyfit(np.log10(group["lr"]), np.log10(group["value"]), 1)[0])
    return keyed(out, keys)


CLAIMS = (
    Claim(
        "benefit_is_the_lr", "BN's advantage comes from the larger learning rate it allows", "Bjorck 2018",
        "Bjorck, Gomes, Selman & Weinberger 2018: BN's gains come mostly from the larger learning rates it"
        " permits; at the same learning rate the advantage largely disappears, and without BN large rates make"
        " deep layers' activations explode",
        (Row("advantage", "BN's final test-accuracy advantage over standard at standard's best lr, minus its"
             " advantage with each at its own best lr (diverged = chance; best lrs by the mean over seeds); per"
             " seed (below 0: the advantage shrinks at the matched lr)", advantage_at_matched_lr, "below",
             unit="accuracy", paired=False, measured_only=same_best_lr),
         Row("standard_activations", "slope of log10 of the last layer's activation variance at the first"
             " analysed step after 0 against log10 lr; standard's value per seed (above 0: activations grow"
             " with the lr)", activation_lr_slope, "above", unit="value", variant="standard", paired=False)),
        findings=(("Bjorck 2018", SUPPORTED),), min_lrs=5, tables=("activations",)),
)
