"""CLI glue for the analyses: a run's checkpoints -> one per-run table (docs/architecture.md).

`analyze(settings, run_dir, out)` (settings["analysis"]: ics, landscape or curvature) loads each
selected checkpoint (never retrains), evaluates the analysis on fixed, seeded analysis batches and writes
`out` (CSV) atomically. Everything is in training mode (batch statistics, as the loss that
training optimises); noisy variants' noise and dropout are off unless settings["noise"].

Choices:
- The same analysis batches (drawn once from settings seed) serve every checkpoint, so changes
  over steps are changes of the weights, not of the batch.
- A checkpoint with non-finite parameters (a diverged run) is skipped with a warning; the table is
  still written (possibly header only), so the workflow goes on.
- Requested steps without a checkpoint (e.g. after a run diverged) are skipped with a warning.
- Precision: optional settings["dtype"] ("float32" | "float64"); absent or None means float64 for
  the deep linear network and float32 otherwise. The DLN trains at lr 1e-6..1e-7, so its probe
  steps (eta down to 1e-8) and ICS updates change a weight by a few float32 ulps: measured on a
  DLN checkpoint, float32 put beta at the smallest eta at 9634 where float64 gives 2581, which
  would decide the max over eta (ICS differences suffer alike). The DLN is tiny, so float64
  costs nothing there; the VGG's steps (eta >= lr/2, lr >= 0.01) are far above float32
  resolution.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ..data import analysis_batches, load_prepared
from ..models import build_model, loss_fn, uses_channels_last
from ..runtime import exact_numerics
from ..tables import ANALYSIS_TABLES, write_csv
from .curvature import curvature
from .functional import Objective, all_finite, origin_state
from .ics import ics
from .landscape import landscape

COMMON = ("steps", "batch_size", "batches", "seed", "noise")
SETTINGS = {
    "ics": COMMON,
    "landscape": COMMON + ("eta_min", "eta_max", "points", "relative", "random_directions"),
    "curvature": COMMON + ("power_iters", "tol"),
}
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoints_of(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints: summary.json's list, else the files on disk.

    summary.json paths may be absolute, relative to the working directory (results/runs/...) or
    relative to the run folder; the first that exists wins, else the run folder's checkpoints/.
    """
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return list_checkpoints(run_dir)
    entries = json.loads(summary.read_text()).get("checkpoints") or []
    found = []
    for entry in entries:
        raw = Path(entry["path"])
        options = [raw] if raw.is_absolute() else [raw, run_dir / raw]
        options.append(run_dir / "checkpoints" / raw.name)
        path = next((p for p in options if p.is_file()), options[-1])
        found.append((int(entry["step"]), path))
    return sorted(found)


def select_steps(available: list[tuple[int, Path]], steps: list[int] | None) -> list[tuple[int, Path]]:
    """settings["steps"] (None = all) among the checkpoints; missing steps are warned about."""
    if steps is None:
        return available
    by_step = dict(available)
    missing = sorted(set(steps) - set(by_step))
    if missing:
        _log(f"warning: no checkpoint for steps {missing} (have {sorted(by_step)}); skipping them")
    return [(s, by_step[s]) for s in sorted(set(steps)) if s in by_step]


def analysis_dtype(spec: dict, settings: dict) -> torch.dtype:
    """settings["dtype"] if given, else float64 for the DLN and float32 otherwise (see above)."""
    name = settings.get("dtype") or ("float64" if spec["model"]["arch"] == "dln" else "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"analysis dtype {name!r}: use float32 or float64")
    return getattr(torch, name)


def prepare_model(spec: dict, state: dict, noise: bool, device: str,
                  dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The run's network with the checkpoint's weights, in training mode, in `dtype`, in the
    memory format training used (`analysis_layout` puts the batches in the same one).

    Stochastic modules (those with a `generator`: Algorithm 1's noise, dropout) are switched to
    eval mode (off) unless `noise`; build_model(noise=False) already disables the noise itself.
    """
    model = build_model(spec, noise=noise)
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype).train()
    if uses_channels_last(spec, device):  # as in training, and for the same speed (models.py)
        model.to(memory_format=torch.channels_last)
    if not noise:
        for module in model.modules():
            if hasattr(module, "generator"):
                module.eval()
    return model


def analysis_layout(x: torch.Tensor, spec: dict, device: str) -> torch.Tensor:
    """An input batch in the memory format of `prepare_model`'s network."""
    return x.contiguous(memory_format=torch.channels_last) if uses_channels_last(spec, device) else x


def run_analysis(analysis: str, objective: Objective, params: dict, model, ckpt: dict,
                 settings: dict) -> list[dict]:
    """The rows (without step) of one analysis at one checkpoint."""
    spec = ckpt["spec"]
    optimizer = ckpt.get("optimizer")
    if analysis == "ics":
        return ics(objective, params, model.layer_groups(), optimizer, spec["optim"])
    if analysis == "landscape":
        groups = (optimizer or {}).get("param_groups") or [spec["optim"]]
        return landscape(objective, params, groups[0]["lr"], settings)
    if analysis == "curvature":
        return [curvature(objective, params, settings)]
    raise ValueError(f"unknown analysis {analysis!r}; known: {', '.join(SETTINGS)}")


def analyze(settings: dict, run_dir: Path, out: Path, device: str = "cpu") -> Path:
    """Run the analysis `settings["analysis"]` on the selected checkpoints of `run_dir` and write
    the table to `out`.

    settings (all keys required, defaults applied by the config): analysis, and the common steps,
    batch_size, batches, seed, noise; landscape also eta_min, eta_max, points, relative,
    random_directions; curvature also power_iters, tol. Optional: dtype (see the module
    docstring). Returns `out`.
    """
    analysis = settings.get("analysis")
    if analysis not in SETTINGS:
        raise ValueError(f"unknown analysis {analysis!r}; known: {', '.join(SETTINGS)}")
    missing = [k for k in SETTINGS[analysis] if k not in settings]
    if missing:
        raise KeyError(f"{analysis} settings lack {missing}")
    run_dir, out = Path(run_dir), Path(out)
    selected = select_steps(checkpoints_of(run_dir), settings["steps"])
    rows: list[dict] = []
    model = batches = None
    for k, (step, path) in enumerate(selected, start=1):
        start = time.perf_counter()
        ckpt = load_checkpoint(path, map_location=device)  # CheckpointError names the file
        spec = ckpt["spec"]
        try:
            if model is None:
                dtype = analysis_dtype(spec, settings)
                model = prepare_model(spec, ckpt["model"], settings["noise"], device, dtype)
            else:
                model.load_state_dict(ckpt["model"])  # copies into the model's dtype
        except (RuntimeError, KeyError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit the run's model: {err}") from err
        params, buffers = origin_state(model)
        if not all_finite(params):
            _log(f"warning: {path}: non-finite parameters (diverged run); skipping step {step}")
            continue
        if batches is None:
            prepared = load_prepared(spec["dataset"]["path"])
            batches = [(analysis_layout(x.to(dtype), spec, device), y.to(dtype) if y.is_floating_point() else y)
                       for x, y in analysis_batches(prepared, spec, settings["batch_size"],
                                                    settings["batches"], settings["seed"], device)]
        objective = Objective(model, buffers, loss_fn(spec), batches, noise_seed=settings["seed"])
        with exact_numerics(device):
            for row in run_analysis(analysis, objective, params, model, ckpt, settings):
                rows.append({"step": step, **row})
        _log(f"{analysis} {run_dir.name}: step {step} ({k}/{len(selected)}) "
             f"{time.perf_counter() - start:.1f}s")
    write_csv(out, rows, ANALYSIS_TABLES[analysis])
    return out
