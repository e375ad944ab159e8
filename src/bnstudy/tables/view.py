"""One study's tables and config, as the figures and the claims both read them.

A `StudyView` reads each table once (through `tables.StudyTables`, which checks its contract) and
answers what every reader asks: the runs, the variants in the order the config lists them, the
study's grid columns, which columns pair a treated run with its reference (seed, lr, grid values),
the configured layers and their names. Pandas only; never torch or matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

import pandas as pd

from ..files import StudyTables


class StudyView:
    """A study's tables (read on first use) and its config."""

    def __init__(self, tables: StudyTables, study: str = ""):
        self.study = study
        self.tables = tables
        self.study_cfg: Mapping = tables.study_cfg
        self.grid: list[str] = list(tables.grid)

    def table(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    @cached_property
    def runs(self) -> pd.DataFrame:
        return self.tables.runs

    @cached_property
    def variants(self) -> list[str]:
        """Config order first (the order the paper discusses them), then anything else in the data."""
        configured = list(self.study_cfg.get("variants") or [])
        seen = [v for v in self.runs["variant"].dropna().unique() if v not in configured]
        return configured + seen

    def ordered(self, variants) -> list[str]:
        present = set(variants)
        return [v for v in self.variants if v in present]

    def condition_keys(self, exclude: Sequence[str] = ()) -> list[str]:
        """What pairs a treated run with its reference: seed, lr and grid values."""
        return [k for k in ["seed", "lr", *self.grid] if k not in exclude and k in self.runs.columns]

    def is_regression(self) -> bool:
        task = self.runs.get("task")
        if task is not None and task.notna().any():
            return bool((task == "regression").all())
        return not self.runs["final_train_accuracy"].notna().any()

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

    def layer_label(self, layer: int) -> str:
        """"layer 5", or for a ResNet "layer 5 (s1 b2 c2)": the layer by stage, block and conv."""
        runs = self.runs
        if "arch" in runs and runs["arch"].eq("resnet").all() and runs["depth"].nunique() == 1:
            from ..config.architectures import resnet_layer_names

            names = resnet_layer_names(int(runs["depth"].iloc[0]))
            if 1 <= layer <= len(names):
                return f"layer {layer} ({names[layer - 1]})"
        return f"layer {layer}"
