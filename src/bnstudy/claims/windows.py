"""The parts of training a claims row speaks of, and how a checkpoint analysis is averaged over one.

- "final": end of training (final accuracies, and measures of the whole run);
- "training": the checkpoint analyses over training, initialisation left out (steps >= from_step);
- "initialisation": the same measure at step 0, reported apart (there the networks differ by their
  initial gradient scale rather than by training);
- "at_init": a claim that is itself about initialisation (its verdict, not a step-0 row).
"""

from __future__ import annotations

import numpy as np

FINAL, TRAINING, INITIALISATION = "final", "training", "initialisation"
AT_INIT = "at_init"


def in_window(frame, window: str, rules):
    """The rows of an analysis table in the part of training `window` speaks of."""
    if window == INITIALISATION:
        return frame[frame["step"] == 0]
    return frame[frame["step"] >= rules.from_step]


def window_label(window: str, rules) -> str:
    return {FINAL: "end of training", INITIALISATION: "step 0", AT_INIT: "at initialisation"}.get(
        window, f"steps >= {rules.from_step}")


def mean_per_run(frame, values, log: bool):
    """Mean over rows of `values` (log10 first when `log`, then over positive values only) per run."""
    keep = values.notna() & np.isfinite(values) & ((values > 0) if log else True)
    kept = np.log10(values[keep]) if log else values[keep]
    return kept.groupby(frame.loc[keep, "run"]).mean()
