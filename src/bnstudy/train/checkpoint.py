"""Checkpoints: everything a run needs to resume, written atomically, validated on load.

A checkpoint holds model, optimizer, step, resolved spec, RNG states, the metric rows recorded so
far and the MLflow run id, so a killed job resumes where it stopped and ends with the same
numbers (see `bnstudy.train.loop`). Files live in `results/runs/{run}/checkpoints/step_{step:07d}.pt`.

A checkpoint holds tensors and plain values only (dicts, lists, tuples, numbers, strings, None),
and is loaded with `torch.load(weights_only=True)`: a `.pt` file is a pickle, and anyone who can
write to a results folder (a shared cluster file system, results copied from a colleague) could
otherwise make whoever resumes or analyses it run their code. A file that needs more than that is
refused with an error naming it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..data.datasets import atomic_torch_save
from ..errors import CheckpointError  # noqa: F401  (raised here; defined without torch)

REQUIRED_KEYS = ("model", "optimizer", "step", "spec")
NAME = re.compile(r"step_(\d{7})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` atomically (temporary file + rename): a kill leaves the old file or the new
    one, never half of one."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    atomic_torch_save(state, Path(path))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint; raise CheckpointError naming the file if it is unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except pickle.UnpicklingError as err:  # weights_only refused a global: never run it
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain values, "
                              f"so it was not loaded: loading it could run code, and bnstudy never "
                              f"writes such files ({found[0] if found else type(err).__name__}); "
                              f"delete it, or rerun the run that should have written it") from None
    except Exception as err:  # truncated zip, ...
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path} lacks the keys {REQUIRED_KEYS}")
    return state


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("step_*.pt"):
        match = NAME.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_good_checkpoint(run_dir: Path, warn=print) -> dict | None:
    """The newest checkpoint that loads; corrupt ones are reported (naming the file) and skipped,
    so resume falls back to the previous good one."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            warn(f"warning: {err}; falling back to the previous checkpoint")
    return None
