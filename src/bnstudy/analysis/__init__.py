"""Checkpoint analyses (Santurkar et al. 2018): internal covariate shift, the loss landscape along
the gradient, curvature. They read a run's checkpoints, never retrain, and write per-run tables
(`run.analyze`). The maths lives in pure functions over a parameter dict (`functional.Objective`),
testable on hand-made modules.
"""

from .curvature import curvature
from .functional import Objective, origin_state, sgd_step
from .ics import ics
from .landscape import landscape

__all__ = ["Objective", "curvature", "ics", "landscape", "origin_state", "sgd_step"]
