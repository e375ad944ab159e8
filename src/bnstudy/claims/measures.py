"""What the claim families' measures share: values keyed by the run's condition, and the checks
every claim passes before a verdict.

A measure is `(view, variant, rules) -> Series` indexed by condition (seed, lr and grid values):
the treated variant's and the reference's Series are then paired on that index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..tables.view import StudyView
from ..config.claim_rules import ClaimRules


def indexed(runs: pd.DataFrame, values, keys: Sequence[str]) -> pd.Series:
    """``values`` (one per row of ``runs``) indexed by the rows' condition columns ``keys``."""
    return pd.Series(np.asarray(values, dtype=float), index=pd.MultiIndex.from_frame(runs[list(keys)]))


def by_condition(values_by_run: pd.Series, data: StudyView) -> pd.Series:
    """Per-run values (indexed by run id, e.g. from an analysis table) indexed by condition."""
    runs = data.runs.set_index("run").loc[values_by_run.index].reset_index()
    return indexed(runs, values_by_run.to_numpy(), data.condition_keys())


def keyed(values: dict, keys: Sequence[str]) -> pd.Series:
    """{condition tuple: value} as a Series indexed by `keys` (empty when there are none)."""
    index = pd.MultiIndex.from_tuples(list(values), names=keys) if values else \
        pd.MultiIndex.from_arrays([[]] * len(keys), names=keys)
    return pd.Series(list(values.values()), index=index, dtype=float)


def as_multi(series: pd.Series, keys: Sequence[str]) -> pd.Series:
    """A groupby result over one key gets a one-level MultiIndex, like one over several."""
    if not isinstance(series.index, pd.MultiIndex):
        series.index = pd.MultiIndex.from_arrays([series.index], names=list(keys))
    return series


def accuracy_or_chance(runs: pd.DataFrame, column: str, rules: ClaimRules) -> pd.Series:
    """Final accuracy per run; a diverged run counts as chance (it learnt nothing usable)."""
    return runs[column].where(runs["status"] != "diverged", rules.chance_accuracy)


def at_best_lr(data: StudyView, variant: str, values: pd.Series) -> pd.DataFrame:
    """The runs of ``variant`` at its own best learning rate for each grid point.

    ``values`` (aligned with data.runs) is what "best" maximises: its mean over seeds picks one lr
    per grid point and variant, the same for every seed (so the choice does not chase one seed's
    luck). Returns those runs with a ``value`` column.
    """
    runs = data.runs.assign(value=values)
    mine = runs[runs["variant"] == variant]
    if mine.empty:
        return mine
    grid = [k for k in data.grid if k in mine.columns]
    means = mine.groupby(grid + ["lr"], dropna=False)["value"].mean().reset_index().dropna(subset=["value"])
    if means.empty:
        return mine.iloc[:0]
    best = means.loc[means.groupby(grid, dropna=False)["value"].idxmax()] if grid else \
        means.loc[[means["value"].idxmax()]]
    return mine.merge(best[grid + ["lr"]], on=grid + ["lr"])


# ---------------------------------------------------------------------------------------------
# checks every claim passes: (data, claim, rules) -> why it cannot be tested, or None


def runs_long_enough(data: StudyView, claim, rules: ClaimRules) -> str | None:
    longest = data.runs["steps_done"].max()
    if not longest >= rules.min_steps:
        return f"runs too short: the longest did {longest} steps < min_steps {rules.min_steps}"
    return None


def network_trains(data: StudyView, claim, rules: ClaimRules) -> str | None:
    """The claim's ``must_train`` variant must leave chance in at least one run, else nothing was
    learnt (None: a measure at initialisation, which training does not enter)."""
    if claim.must_train is None:
        return None
    runs = data.runs[data.runs["variant"] == claim.must_train]
    if data.is_regression():
        train = data.table("train")
        losses = train[train["variant"] == claim.must_train].sort_values("step").dropna(subset=["loss"])
        ends = losses.groupby("run")["loss"].agg(["first", "last"])
        if (ends["last"] <= (1 - rules.min_loss_drop) * ends["first"]).any():
            return None
        return f"{claim.must_train} never lowers its training loss by {rules.min_loss_drop:.0%}"
    if (runs["final_train_accuracy"] > rules.chance_accuracy + rules.chance_margin).any():
        return None
    return (f"{claim.must_train} never leaves chance (final train accuracy never above "
            f"{rules.chance_accuracy + rules.chance_margin:g})")


COMMON_CHECKS = (runs_long_enough, network_trains)


def final_accuracy(column: str):
    """Final accuracy (``column`` of runs.csv) of each run of ``variant`` (diverged = chance)."""

    def measure(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
        runs = data.runs[data.runs["variant"] == variant]
        return indexed(runs, accuracy_or_chance(runs, column, rules), data.condition_keys())

    return measure
