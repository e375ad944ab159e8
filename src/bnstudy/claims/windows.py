"""The parts of training a claims row speaks of, and how a checkpoint analysis is averaged over one.

- "final": end of training (final accuracies, and measures of the whole run);
- "early" and "late": the checkpoint analyses over training, split at `early_fraction` of each
  run's steps (the order of two networks can change during training: averaging over all of it
  can cancel opposite effects into none); each averaged over steps by time (trapezoid), so that
  a dense stretch of checkpoints does not outweigh a sparse one;
- "initialisation": the same measure at step 0, reported apart (there the networks differ by their
  initial gradient scale rather than by training);
- "at_init": a claim that is itself about initialisation (its verdict, not a step-0 row).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FINAL, EARLY, LATE, INITIALISATION = "final", "early", "late", "initialisation"
AT_INIT = "at_init"
OVER_TRAINING = (EARLY, LATE, INITIALISATION)  # the windows of a checkpoint-analysis row, in order


def early_end(frame: pd.DataFrame, runs: pd.DataFrame, rules) -> pd.Series:
    """Per row of an analysis table: the last step of its run's early window."""
    return frame["run"].map(runs.set_index("run")["steps"]).astype(float) * rules.early_fraction


def in_window(frame: pd.DataFrame, window: str, rules, runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of an analysis table in the part of training `window` speaks of (`runs`: the
    study's runs.csv, for each run's length)."""
    if window == INITIALISATION:
        return frame[frame["step"] == 0]
    end = early_end(frame, runs, rules)
    if window == EARLY:
        return frame[(frame["step"] > 0) & (frame["step"] <= end)]
    if window == LATE:
        return frame[frame["step"] > end]
    raise ValueError(f"an analysis table has no window {window!r}")


def window_label(window: str, rules) -> str:
    share = f"{rules.early_fraction:.0%}"
    return {FINAL: "end of training", INITIALISATION: "step 0", AT_INIT: "at initialisation",
            EARLY: f"early (steps > 0 to {share} of training)", LATE: f"late (after {share} of training)"}[window]


def time_mean(values: pd.Series) -> float:
    """Trapezoid mean over the steps of a Series indexed by step (one value: itself)."""
    steps = values.index.to_numpy(dtype=float)
    v = values.to_numpy(dtype=float)
    if len(v) == 1:
        return float(v[0])
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(steps)) / (steps[-1] - steps[0]))


def mean_per_run(frame: pd.DataFrame, values: pd.Series, log: bool) -> pd.Series:
    """Per run: `values` (log10 first when `log`, then positive values only) averaged over the rows
    of each step (layers, directions), then over steps by time (`time_mean`)."""
    keep = values.notna() & np.isfinite(values) & ((values > 0) if log else True)
    kept = np.log10(values[keep]) if log else values[keep]
    per_step = kept.groupby([frame.loc[keep, "run"], frame.loc[keep, "step"]]).mean()
    if per_step.empty:
        return pd.Series(dtype=float)
    return per_step.groupby(level=0).apply(lambda run: time_mean(run.droplevel(0).sort_index()))
