"""The analysis job of one run: its checkpoints -> one table per (analysis kind, settings) that
some study asks for (docs/architecture.md).

One job per run, because the work per analysis is small next to starting a process and loading
the checkpoints: each selected checkpoint is loaded once and every analysis that wants its step
reads it. Nothing is retrained. Everything is in training mode (batch statistics, the loss that
training optimises); noisy variants' noise and dropout are off unless a settings block says
`noise: true`.

Choices:
- The same analysis batches (drawn once from the settings' seed) serve every checkpoint, so
  changes over steps are changes of the weights, not of the batch.
- A checkpoint with non-finite parameters (a diverged run) is skipped with a warning; the tables
  are still written (possibly header only), so the workflow goes on.
- Requested steps without a checkpoint (e.g. after a run diverged) are skipped with a warning.
- Precision: settings["dtype"] ("float32" | "float64"); None means float64 for the deep linear
  network and float32 otherwise. The DLN trains at lr 1e-6..1e-7, so its probe steps (eta down to
  1e-8) and ICS updates change a weight by a few float32 ulps: measured on a DLN checkpoint,
  float32 put beta at the smallest eta at 9634 where float64 gives 2581, which would decide the
  max over eta (ICS differences suffer alike). The DLN is tiny, so float64 costs nothing there;
  the VGG's steps (eta >= lr/2, lr >= 0.01) are far above float32 resolution.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.batches import analysis_batches
from ..config.catalog import ANALYSES
from ..train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ..data.datasets import load_prepared
from ..models.networks import build_model, loss_fn, uses_channels_last
from ..train.runtime import exact_numerics
from ..config.spec import RunSpec
from ..files import write_csv
from .functional import Objective, Origin, all_finite, bn_modes, origin_state

# the settings every analysis kind has (its record in bnstudy.config.catalog adds its own)
COMMON = ("steps", "batch_size", "batches", "seed", "noise", "dtype")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, eq=False)  # identity: settings is a dict
class AnalysisJob:
    """One table of the run's analysis job: an analysis kind with one set of settings."""

    analysis: str
    digest: str       # the hash of `settings` (bnstudy.config.plan): the table is <analysis>-<digest>.csv
    settings: dict

    def __post_init__(self):
        if self.analysis not in ANALYSES:
            raise ValueError(f"unknown analysis {self.analysis!r}; known: {', '.join(ANALYSES)}")
        missing = [k for k in (*COMMON, *ANALYSES[self.analysis].settings) if k not in self.settings]
        if missing:
            raise KeyError(f"{self.analysis} settings lack {missing}")

    @property
    def table(self) -> str:
        return f"{self.analysis}-{self.digest}.csv"

    def compute(self, origin: Origin) -> list[dict]:
        module = importlib.import_module(f"{__package__}.{ANALYSES[self.analysis].module}")
        return module.compute(origin, self.settings)


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


def statistics(settings: dict) -> str:
    """Which statistics the normalisers use: the batch's (the default) or the running ones, for
    the analysis kinds that offer the choice (`bn_mode`). Where bn_mode is a list (spectrum,
    density) the origin is built in its first mode and the analysis derives the others from it
    (`functional.per_mode`)."""
    return bn_modes(settings)[0]


def analysis_dtype(spec: RunSpec, settings: dict) -> torch.dtype:
    """settings["dtype"] if given, else float64 for the DLN and float32 otherwise (see above)."""
    name = settings.get("dtype") or ("float64" if spec.model.arch == "dln" else "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"analysis dtype {name!r}: use float32 or float64")
    return getattr(torch, name)


def prepare_model(spec: RunSpec, state: dict, noise: bool, device: str,
                  dtype: torch.dtype = torch.float32, statistics: str = "batch") -> torch.nn.Module:
    """The run's network with the checkpoint's weights, in training mode, in `dtype`, in the
    memory format training used (`analysis_layout` puts the batches in the same one).

    Stochastic modules (those with a `generator`: Algorithm 1's noise, dropout) are switched to
    eval mode (off) unless `noise`; build_model(noise=False) already disables the noise itself.
    With `statistics` "running" the whole network is in eval mode: normalisers use the
    checkpoint's running statistics, noise and dropout are off.
    """
    model = build_model(spec, noise=noise)
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype).train()
    if uses_channels_last(spec, device):  # as in training, and for the same speed (models.py)
        model.to(memory_format=torch.channels_last)
    if statistics == "running":
        return model.eval()
    if not noise:
        for module in model.modules():
            if hasattr(module, "generator"):
                module.eval()
    return model


def analysis_layout(x: torch.Tensor, spec: RunSpec, device: str) -> torch.Tensor:
    """An input batch in the memory format of `prepare_model`'s network."""
    return x.contiguous(memory_format=torch.channels_last) if uses_channels_last(spec, device) else x


class Probes:
    """The models and analysis batches of one run, built once and shared by every job that asks
    for the same ones (a model per (noise, dtype), batches per (size, count, seed, dtype))."""

    def __init__(self, device: str):
        self.device = device
        self.models: dict = {}   # (noise, dtype) -> [model, the checkpoint it holds]
        self.batches: dict = {}

    def model(self, spec: RunSpec, ckpt: dict, path: Path, settings: dict):
        """The model for `settings` holding checkpoint `path`'s weights (loaded once per step)."""
        dtype = analysis_dtype(spec, settings)
        key = (bool(settings["noise"]), dtype, statistics(settings))
        try:
            if key not in self.models:
                self.models[key] = [prepare_model(spec, ckpt["model"], key[0], self.device, dtype, key[2]), path]
            elif self.models[key][1] != path:
                self.models[key][0].load_state_dict(ckpt["model"])  # copies into the model's dtype
                self.models[key][1] = path
        except (RuntimeError, KeyError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit the run's model: {err}") from err
        return self.models[key][0]

    def batches_for(self, spec: RunSpec, settings: dict):
        dtype = analysis_dtype(spec, settings)
        key = (settings["batch_size"], settings["batches"], settings["seed"], dtype)
        if key not in self.batches:
            prepared = load_prepared(spec.dataset.path)
            self.batches[key] = [
                (analysis_layout(x.to(dtype), spec, self.device), y.to(dtype) if y.is_floating_point() else y)
                for x, y in analysis_batches(prepared, settings["batch_size"], settings["batches"],
                                             settings["seed"], self.device)]
        return self.batches[key]


def analyze(jobs: Sequence[AnalysisJob], run_dir: Path, out_dir: Path, device: str = "cpu") -> list[Path]:
    """Run every job on its selected checkpoints of `run_dir`; write `out_dir/<job.table>` each.

    Returns the tables written (every job's, header-only where no checkpoint could be used).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    available = checkpoints_of(run_dir)
    wanted = {job: dict(select_steps(available, job.settings["steps"])) for job in jobs}
    steps = sorted({step: path for chosen in wanted.values() for step, path in chosen.items()}.items())
    rows: dict[AnalysisJob, list[dict]] = {job: [] for job in jobs}
    probes = Probes(device)
    for k, (step, path) in enumerate(steps, start=1):
        start = time.perf_counter()
        ckpt = load_checkpoint(path, map_location=device)  # CheckpointError names the file
        spec = RunSpec.from_dict(ckpt["spec"], f"checkpoint {path}")
        done = []
        for job in (j for j in jobs if step in wanted[j]):
            model = probes.model(spec, ckpt, path, job.settings)
            params, buffers = origin_state(model)
            if not all_finite(params):
                _log(f"warning: {path}: non-finite parameters (diverged run); skipping step {step}")
                break
            objective = Objective(model, buffers, loss_fn(spec), probes.batches_for(spec, job.settings),
                                  noise_seed=job.settings["seed"], statistics=statistics(job.settings))
            origin = Origin(objective, params, model.layer_groups(), ckpt.get("optimizer"),
                            {"lr": spec.optim.lr, "momentum": spec.optim.momentum,
                             "weight_decay": spec.optim.weight_decay})
            began = time.perf_counter()
            with exact_numerics(device):
                rows[job] += [{"step": step, **row} for row in job.compute(origin)]
            done.append(job.analysis)
            # a line per analysis: a Hessian spectrum at one step can take many minutes on a CPU
            _log(f"{run_dir.name}: step {step} ({k}/{len(steps)}) {job.analysis} {time.perf_counter() - began:.1f}s")
        _log(f"{run_dir.name}: step {step} ({k}/{len(steps)}) {', '.join(done) or 'skipped'} "
             f"{time.perf_counter() - start:.1f}s in all")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_csv(out_dir / job.table, rows[job], list(ANALYSES[job.analysis].columns)) for job in jobs]
