"""The training loop: one run (variant x lr x seed x setup), resumable and deterministic.

Design choices, each for a reason:
- The prepared uint8 tensors sit on the training device and batch t is a pure function of
  (seed, t) (`BatchSampler`); augmentation and the noise/dropout generators are reseeded from
  (seed, t) each step. So a job killed at any point and restarted from its last checkpoint draws
  exactly what an uninterrupted run would, and on CPU ends with identical metrics. Everything the
  loop carries from step to step (metric rows, running windows, the per-unit moments of the last
  recorded step) is in the checkpoint.
- Metric rows are kept in memory; the CSV tables are written once, atomically, at the end. A
  killed job leaves no half-written table.
- Divergence is a result: a non-finite loss ends the run, marks it diverged, and the outputs are
  still written so the rest of the DAG (and the figures) go on.
- Two accuracies, because they are two networks for noisy variants: the *training-mode* accuracy
  on the batches trained on (batch statistics, Algorithm 1's noise and dropout on: the network
  that is trained, as the papers' training curves show it), and the *eval-mode* accuracy on fixed
  train/test samples (running statistics, noise and dropout off).
- Activation statistics are taken with temporary hooks, only on recording steps, per unit: the
  noise of Algorithm 1 is drawn per unit and averages away over a layer's units.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch

from ..data.batches import BatchSampler, InputTransform, augment, step_generator
from .checkpoint import checkpoint_path, latest_good_checkpoint, list_checkpoints, save_checkpoint
from ..data.datasets import load_prepared
from ..models.networks import build_model, loss_fn, set_generator, training_masks, uses_channels_last
from .runtime import autocast_context, conv_precision, resolve_device, set_threads
from .sgd import SGD
from ..config.spec import RunSpec
from ..files import RUN_TABLES, eval_metric, write_csv, write_json
from .evaluation import Readback, evaluate
from .layers import LayerRecorder


READBACK_EVERY = {"cpu": 1}  # steps between reading losses back to the host; 32 elsewhere (see Readback)


def place_model(spec: RunSpec, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The run's model on `device`, in channels_last when `uses_channels_last` says so."""
    channels_last = uses_channels_last(spec, device)
    model = build_model(spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


# ----------------------------------------------------------------------------------------------
# the run


class NullTracker:
    """What `train` calls when MLflow is off (bnstudy.tracking.tracker provides the real one)."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, status: str, summary: dict) -> None:
        pass

    def state(self) -> dict:
        return {"enabled": False}


class Run:
    """One training run's state: data, model, optimizer, metric rows; and its named steps."""

    def __init__(self, spec: RunSpec, run_dir: Path, threads: int = 0, log=None):
        self.spec, self.run_dir = spec, Path(run_dir)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.threads = set_threads(spec.runtime, threads)
        self.device = resolve_device(spec.runtime)
        self.precision = spec.runtime.precision
        optim, self.logging = spec.optim, spec.log
        self.steps, self.seed = optim.steps, spec.seed

        data = load_prepared(spec.dataset.path)
        _check_data(spec, data.meta)
        self.data = data.to(self.device)
        self.regression = data.task == "regression"
        self.model, channels_last = place_model(spec, self.device)
        self.transform = InputTransform(data.meta, self.device, channels_last)
        # optim.train_only: which parameters SGD may change (the rest keep their initial values;
        # the mask is a pure function of the seed, so a resumed run recomputes the same one)
        masks = training_masks(self.model, spec)
        self.opt = SGD(self.model.parameters(), lr=optim.lr, momentum=optim.momentum,
                       weight_decay=optim.weight_decay, masks=masks)
        if masks is not None:
            trained = sum(p.numel() if m is None else int(m.sum()) if isinstance(m, torch.Tensor) else 0
                          for p, m in zip(self.opt.params, masks))
            total = sum(p.numel() for p in self.opt.params)
            self.log(f"[{spec.run}] optim.train_only {optim.train_only}: training {trained:,} of {total:,} parameters")
        self.loss = loss_fn(spec)
        self.summed = optim.loss_reduction == "sum"
        self.sampler = BatchSampler(self.data.train_x.shape[0], optim.batch_size, self.seed, self.device)
        n = self.logging.eval_samples
        self.eval_sets = {"train": (self.data.train_x[:n], self.data.train_y[:n])}
        if self.data.test_x.shape[0]:
            self.eval_sets["test"] = (self.data.test_x[:n], self.data.test_y[:n])
        # the final evaluation, whose accuracy the claims compare, on the whole test set (by default)
        final_n = self.logging.final_test_samples or self.data.test_x.shape[0]
        self.final_sets = dict(self.eval_sets)
        if "test" in self.eval_sets:
            self.final_sets["test"] = (self.data.test_x[:final_n], self.data.test_y[:final_n])
        self.random_modules = any(hasattr(m, "generator") for m in self.model.modules())  # noise, dropout
        self.step_model = self.compiled(spec.runtime.compile)
        self.augmenting = bool(spec.augment.crop or spec.augment.flip)

        self.metrics: dict[str, list[dict]] = {name: [] for name in RUN_TABLES}
        self.recorder = LayerRecorder(self.model, self.logging.units)
        self.readback = Readback(READBACK_EVERY.get(self.device.type, 32), self.logging.train_every)
        self.start, self.elapsed, self.previous_mlflow = 0, 0.0, None
        self.started_ms = int(time.time() * 1000)  # when the run first started (a resume keeps it)
        self.tracker = NullTracker()
        self.t0 = time.perf_counter()

    def compiled(self, want: str):
        """The module the training steps call: the model itself, or (runtime.compile: on) the
        model through torch.compile (CUDA: mode reduce-overhead, CUDA graphs). Recording steps
        and evaluations call the eager model, whose hooks would otherwise recompile the graph;
        variants that draw from a per-step generator stay eager for the same reason."""
        if want != "on":
            return self.model
        if self.random_modules:
            self.log("runtime.compile: on, but this variant draws noise or dropout from a per-step "
                     "generator (a new guard every step): training eagerly")
            return self.model
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        return torch.compile(self.model, mode=mode)

    # -- resume --------------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the newest good checkpoint, if any (a corrupt one is named and skipped)."""
        state = latest_good_checkpoint(self.run_dir, warn=self.log)
        if state is None:
            return
        theirs = state["spec"]
        if theirs.get("run") != self.spec.run:
            raise RuntimeError(f"{self.run_dir}/checkpoints belong to run {theirs.get('run')}, "
                               f"not {self.spec.run}: move them away")
        their_precision = (theirs.get("runtime") or {}).get("precision", "fp32")
        if their_precision != self.precision:
            raise RuntimeError(f"{self.run_dir}/checkpoints were trained with runtime.precision="
                               f"{their_precision}, this job asks for {self.precision}: precision changes "
                               f"the numbers, so a run cannot switch it; move the checkpoints away")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.start, self.metrics = state["step"], {name: [] for name in RUN_TABLES} | state["metrics"]
        self.previous_mlflow, self.elapsed = state.get("mlflow_run_id"), state.get("wall_seconds", 0.0)
        self.started_ms = state.get("started_ms", self.started_ms)
        loop = state.get("loop") or {}
        self.readback = Readback(self.readback.interval, self.readback.train_every, loop.get("readback"))
        self.recorder.load(loop.get("recorder"), self.device)
        self.log(f"resuming {self.spec.run} from step {self.start}")

    # -- named steps ---------------------------------------------------------------------------

    def checkpoint(self, done: int) -> None:
        save_checkpoint(checkpoint_path(self.run_dir, done), {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": done,
            "spec": self.spec.to_dict(),
            "rng": {"scheme": "per-step generators seeded from (seed, step, stream)", "seed": self.seed},
            "metrics": self.metrics, "mlflow_run_id": self.tracker.run_id,
            "loop": {"readback": self.readback.state(), "recorder": self.recorder.state()},
            "wall_seconds": self.wall(), "started_ms": self.started_ms})

    def evaluate(self, done: int) -> None:
        """Eval-mode loss/accuracy on the fixed train and test samples (the final evaluation on
        `log.final_test_samples` test samples), and the training-mode mean over the batches
        trained on since the last evaluation (split train_batches)."""
        logged = {}
        sets = self.final_sets if done == self.steps else self.eval_sets
        for split, (x, y) in sets.items():
            loss, accuracy = evaluate(self.model, x, y, self.transform, self.loss, self.regression, self.summed)
            self.metrics["eval"].append({"step": done, "split": split, "loss": loss, "accuracy": accuracy})
            logged.update({eval_metric(split, "loss"): loss, eval_metric(split, "accuracy"): accuracy})
        if self.readback.since_eval.count:
            loss, accuracy = self.readback.since_eval.take()
            self.metrics["eval"].append({"step": done, "split": "train_batches", "loss": loss,
                                         "accuracy": accuracy})
            logged.update({eval_metric("train_batches", "loss"): loss,
                           eval_metric("train_batches", "accuracy"): accuracy})
        self.tracker.log_metrics({k: v for k, v in logged.items() if math.isfinite(v)}, done)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step`: a pure function of (seed, step), augmented and with the step's generators."""
        idx = self.sampler.indices(step)
        x, y = self.transform(self.data.train_x[idx]), self.data.train_y[idx]
        if self.augmenting:
            x = augment(x, self.spec.augment.crop, self.spec.augment.flip,
                        step_generator(self.seed, step, 1, self.device))
        if self.random_modules:
            set_generator(self.model, step_generator(self.seed, step, 2, self.device))
        return x, y

    def recording(self, step: int) -> tuple[bool, bool]:
        """(full statistics, per-unit moments only) for this step: full every `layers_every` steps,
        moments on the step after (Fig. 8 compares successive steps)."""
        full = step % self.logging.layers_every == 0
        return full, full or self.recorder.moments_step == step - 1

    def forward_backward(self, step: int, autocast, full: bool, moments: bool):
        """Loss, training-mode accuracy and gradients of batch `step` (statistics hooks on)."""
        x, y = self.batch(step)
        model = self.model if (full or moments) else self.step_model
        if model is not self.model and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier outputs may be reused
        with self.recorder.watch(full, moments):
            with autocast:
                out = model(x)
                value = self.loss(out.float(), y)
            self.opt.zero_grad(set_to_none=True)
            value.backward()
        accuracy = None if self.regression else (out.argmax(1) == y).float().mean()
        return value, accuracy

    def read_back(self) -> int | None:
        return self.readback.flush(self.metrics["train"], self.tracker.log_metrics, self.log)

    def progress(self, done: int, images: int) -> None:
        now = time.perf_counter()
        rate = images / max(now - self.t0, 1e-9)
        eta = (self.steps - done) * (now - self.t0) / max(done - self.start, 1)
        self.log(f"[{self.spec.run}] step {done}/{self.steps} loss {self.readback.last_loss:.4f} "
                 f"{rate:,.0f} img/s eta {eta:,.0f}s")

    def wall(self) -> float:
        return self.elapsed + time.perf_counter() - self.t0

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> tuple[str, int | None]:
        """Steps start..steps; returns (status, diverged step)."""
        saved = set(self.spec.checkpoints)
        autocast = autocast_context(self.device, self.precision)
        self.model.train()
        images, last_report = 0, time.perf_counter()
        with conv_precision(self.device, self.precision):
            if self.start == 0:
                self.evaluate(0)
                if 0 in saved:
                    self.checkpoint(0)
            for step in range(self.start, self.steps):
                full, moments = self.recording(step)
                value, accuracy = self.forward_backward(step, autocast, full, moments)
                self.readback.add(step, value, accuracy)
                done = step + 1
                report = time.perf_counter() - last_report > 10 or done in (self.steps, self.start + 1)
                evaluating = done % self.logging.eval_every == 0 or done == self.steps
                must_read = moments or report or evaluating or done in saved or self.readback.due()
                if must_read and (diverged := self.read_back()) is not None:
                    return "diverged", diverged  # nothing of the diverged step is recorded
                if moments:
                    self.recorder.collect(step, full, self.metrics["layers"], self.metrics["units"])
                self.opt.step()
                images += self.sampler.batch_size
                if evaluating:
                    self.evaluate(done)
                if done in saved:
                    self.checkpoint(done)
                if report:
                    self.progress(done, images)
                    last_report = time.perf_counter()
        diverged = self.read_back()
        return ("diverged", diverged) if diverged is not None else ("completed", None)


def train(spec: RunSpec, run_dir: Path, open_tracker=None, log=None, threads: int = 0, timer=None,
          name: str | None = None) -> dict:
    """Train the run described by `spec` into `run_dir`, resuming from its last good checkpoint.

    `open_tracker(previous_run_id) -> tracker` is called once the checkpoint (if any) is loaded,
    so a resumed run continues the same MLflow run. `timer()`, a context manager, times the
    training itself (the CLI's work timer: not start-up, not the tracker). `name`: the run's
    display name, recorded in summary.json. Returns the summary written to summary.json.
    """
    timer = timer or contextlib.nullcontext
    with timer():
        run = Run(spec, run_dir, threads=threads, log=log)
        run.resume()
    if open_tracker:
        run.tracker = open_tracker(run.previous_mlflow) or NullTracker()
    with timer():
        status, diverged_step = run.train()
        summary = make_summary(spec, run.run_dir, run.metrics, status, diverged_step, str(run.device),
                               run.wall(), run.tracker.run_id, threads=run.threads, name=name,
                               started_ms=run.started_ms, ended_ms=int(time.time() * 1000))
        write_tables(spec, run.run_dir, run.metrics)
    # the tables are on disk before tracking is waited for (bounded: bnstudy.tracking.tracker); the
    # tracker checks the store against them, and summary.json (written last: it marks the run
    # done) records whether tracking is complete (`bnstudy track` re-sends what is not)
    run.tracker.finish(status, summary)
    summary.update(mlflow_run_id=run.tracker.run_id, tracking=run.tracker.state())
    write_json(run.run_dir / "summary.json", summary)
    return summary


def _check_data(spec: RunSpec, meta: dict) -> None:
    want = spec.dataset
    if want.task != meta["task"]:
        raise RuntimeError(f"{want.path} is a {meta['task']} dataset, the run expects {want.task}")
    if want.task == "classification" and (tuple(meta["shape"]) != want.shape
                                          or len(meta["classes"]) != want.classes):
        raise RuntimeError(f"{want.path} holds {meta['shape']} images of {len(meta['classes'])} "
                           f"classes; config expects {list(want.shape)} and {want.classes}: set "
                           f"datasets.{want.name}.image_size/channels/classes to match")


def make_summary(spec: RunSpec, run_dir: Path, metrics: dict, status: str, diverged_step: int | None,
                 device: str, wall: float, mlflow_run_id: str | None, threads: int = 0,
                 name: str | None = None, started_ms: int | None = None,
                 ended_ms: int | None = None) -> dict:
    """summary.json: status, final metrics (the last evaluation of each split), checkpoints; the
    display name, and when the run first started and when its training ended (epoch ms)."""
    last = {row["split"]: row for row in metrics["eval"]}
    final = {}
    for split in ("train", "test", "train_batches"):
        for key in ("loss", "accuracy"):
            value = last[split][key] if split in last and status == "completed" else math.nan
            final[f"{split}_{key}"] = value if isinstance(value, float) and math.isfinite(value) else None
    return {
        "run": spec.run, "name": name, "status": status,
        "steps_done": diverged_step if status == "diverged" else spec.optim.steps,
        "diverged_step": diverged_step,
        "final": final,
        "checkpoints": [{"step": s, "path": str(p)} for s, p in list_checkpoints(run_dir)],
        "labels": {"variant": spec.norm.variant, "lr": spec.optim.lr, "seed": spec.seed},
        "wall_seconds": wall, "device": device, "threads": threads, "mlflow_run_id": mlflow_run_id,
        "started_ms": started_ms, "ended_ms": ended_ms,
    }


def write_tables(spec: RunSpec, run_dir: Path, metrics: dict) -> None:
    """The run's spec and per-run tables (summary.json follows them: see `train`)."""
    write_json(run_dir / "spec.json", spec.to_dict())
    for name, columns in RUN_TABLES.items():
        write_csv(run_dir / f"{name}.csv", metrics[name], columns)
