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
from ..tables.files import RUN_TABLES, eval_metric, write_csv, write_json

PERCENTILES = (5, 15, 50, 85, 95)
READBACK_EVERY = {"cpu": 1}  # steps between reading losses back to the host; 32 elsewhere (see Readback)
MAX_STAT_SAMPLES = 1 << 14  # values per unit (deterministic stride) for its percentiles


def place_model(spec: RunSpec, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The run's model on `device`, in channels_last when `uses_channels_last` says so."""
    channels_last = uses_channels_last(spec, device)
    model = build_model(spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


# ----------------------------------------------------------------------------------------------
# activation statistics


def unit_percentiles(units: torch.Tensor) -> torch.Tensor:
    """PERCENTILES of each row of `units` (units x values): (units, len(PERCENTILES)).

    Rows longer than MAX_STAT_SAMPLES are subsampled with a fixed stride (deterministic): a
    percentile from 16k values is within ~0.3 percentile points of the full batch's."""
    if units.shape[1] > MAX_STAT_SAMPLES:
        units = units[:, :: units.shape[1] // MAX_STAT_SAMPLES + 1]
    q = torch.tensor([p / 100 for p in PERCENTILES], device=units.device)
    return torch.quantile(units, q, dim=1).T


def filter_cosines(weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor | None:
    """|cos(w_i, g_i)| of each of the layer's filters: 0 for a filter that is scale-invariant (a
    layer followed by BatchNorm without eps: w_i . g_i = 0, Arora, Li & Lyu 2019)."""
    if grad is None:
        return None
    w, g = weight.detach().flatten(1).float(), grad.detach().flatten(1).float()
    return ((w * g).sum(1) / (w.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-30)).abs()


def cosine_spread(weight: torch.Tensor, grad: torch.Tensor | None) -> tuple:
    """(largest, median) over the layer's filters of |cos(w_i, g_i)|: the extreme filter and the
    typical one, from one pass over the filters."""
    cosines = filter_cosines(weight, grad)
    return (math.nan, math.nan) if cosines is None else (cosines.max(), cosines.median())


def unexplained_cosine(weight: torch.Tensor, grad: torch.Tensor | None, stats: dict) -> torch.Tensor | float:
    """max over a BatchNorm layer's filters of |w_i . g_i - eps/(v_i + eps) gamma_i dL/dgamma_i| /
    (||w_i|| ||g_i||): what of cos(w_i, g_i) BN's eps does not explain. With eps the layer is not
    exactly scale-invariant: d/da L(a w) at a = 1 is w . g = eps/(v + eps) gamma dL/dgamma per
    channel (v: the batch variance of the channel's input), so |cos(w, g)| is set by eps, and the
    identity, not cos = 0, is what Arora, Li & Lyu's analysis predicts of a real BN layer."""
    share, norm = stats.get("eps_share"), stats.get("bn")
    if grad is None or share is None or norm.weight.grad is None:
        return math.nan
    w, g = weight.detach().flatten(1).float(), grad.detach().flatten(1).float()
    predicted = share * norm.weight.detach().float() * norm.weight.grad.detach().float()
    return (((w * g).sum(1) - predicted).abs() / (w.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-30)).max()


def recorded_units(width: int, count: int) -> list[int]:
    """`count` fixed, evenly spaced unit indices of a layer of `width` units (0 always among them)."""
    if count >= width:
        return list(range(width))
    return sorted({round(i * (width - 1) / max(count - 1, 1)) for i in range(count)})


class LayerRecorder:
    """Per-step activation statistics of every block's non-linearity input (after norm and noise).

    On a recording step t: the percentiles, mean and variance of `units` fixed units (each over
    the batch and spatial positions: Figs. 1c, 2, 9 plot such single units), the gradient norms,
    mean |gamma_j| / sigma_j (Santurkar et al. Thm 4.1), and every unit's mean and variance. On
    step t + 1 every unit's mean and variance again, so that the layer's row of step t gets
    mean_j |mu_j(t+1) - mu_j(t)| and mean_j |var_j(t+1) - var_j(t)| (Fig. 8: the change of the
    moments between two successive steps, per unit, averaged over units).
    """

    def __init__(self, model, units: int):
        self.model, self.units = model, units
        self.moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> per-unit (mean, var)
        self.moments_step: int | None = None  # the step `moments` were taken at
        self._handles: list = []
        self._stats: dict[int, dict] = {}
        self._new_moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- checkpointed state ------------------------------------------------------------------------

    def state(self) -> dict:
        return {"step": self.moments_step,
                "moments": {k: (m.cpu(), v.cpu()) for k, (m, v) in self.moments.items()}}

    def load(self, state: dict | None, device: torch.device) -> None:
        state = state or {"step": None, "moments": {}}
        self.moments_step = state["step"]
        self.moments = {k: (m.to(device), v.to(device)) for k, (m, v) in state["moments"].items()}

    # -- hooks for one step ------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, full: bool, moments: bool):
        """Hooks for one forward/backward: `full` statistics and/or only the per-unit moments."""
        if not (full or moments):
            yield
            return
        for i, block in enumerate(self.model.blocks, start=1):
            self._handles.append(block.act.register_forward_pre_hook(self._activation_hook(i, full)))
            if full:
                self._handles.append(block.norm.register_forward_pre_hook(self._norm_hook(i)))
        try:
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def _activation_hook(self, layer: int, full: bool):
        def hook(module, args):
            z = args[0]
            d = z.detach().float()
            dims = (0,) if d.ndim == 2 else (0, *range(2, d.ndim))
            mean, var = d.mean(dims), d.var(dims, unbiased=False)
            self._new_moments[layer] = (mean, var)
            if not full:
                return
            stats = self._stats.setdefault(layer, {})
            units = recorded_units(d.shape[1], self.units)
            # one (units x values) matrix, one quantile call; read back once in `collect`
            values = d[:, units].transpose(0, 1).reshape(len(units), -1)
            stats["units"] = (units, torch.cat([mean[units, None], var[units, None],
                                                unit_percentiles(values)], dim=1))
            if z.requires_grad:
                z.register_hook(lambda g: stats.__setitem__("output_grad_norm", g.norm()))
        return hook

    def _norm_hook(self, layer: int):
        def hook(module, args):
            norm = module[0] if isinstance(module, torch.nn.Sequential) else module
            stats = self._stats.setdefault(layer, {})
            weight = getattr(norm, "weight", None)
            if weight is None or not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                stats["gamma_over_sigma"] = math.nan
                return
            x = args[0].detach().float()
            dims = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
            var = x.var(dims, unbiased=False)
            sigma = (var + norm.eps).sqrt()
            if norm.training:  # batch statistics: the eps identity of `unexplained_cosine` holds
                stats["eps_share"], stats["bn"] = norm.eps / (var + norm.eps), norm
            stats["gamma_over_sigma"] = (weight.detach().abs() / sigma).mean()
        return hook

    # -- rows ----------------------------------------------------------------------------------------

    def collect(self, step: int, full: bool, layer_rows: list[dict], unit_rows: list[dict]) -> None:
        """After a watched step's backward: fill the moment changes of the previous recorded step's
        rows (if it was step - 1), and append this step's rows when `full`."""
        new, self._new_moments = self._new_moments, {}
        if self.moments_step == step - 1 and new:
            open_rows = {row["layer"]: row for row in layer_rows if row["step"] == step - 1}
            for layer, (mean, var) in new.items():
                if layer in self.moments and layer in open_rows:
                    old_mean, old_var = self.moments[layer]
                    open_rows[layer]["unit_mean_change"] = (mean - old_mean).abs().mean().item()
                    open_rows[layer]["unit_var_change"] = (var - old_var).abs().mean().item()
        if not full:
            self.moments, self.moments_step = {}, None
            return
        self.moments, self.moments_step = new, step
        scalar = lambda v: torch.as_tensor(v, dtype=torch.float32).cpu()  # noqa: E731
        scalars, unit_stats = [], []
        for i, block in enumerate(self.model.blocks, start=1):
            stats = self._stats.get(i, {})
            weight, grad = block.layer.weight, block.layer.weight.grad
            scalars.append(torch.stack([scalar(grad.norm() if grad is not None else math.nan),
                                        scalar(stats.get("output_grad_norm", math.nan)),
                                        scalar(stats.get("gamma_over_sigma", math.nan)),
                                        scalar(weight.detach().float().norm()),
                                        *map(scalar, cosine_spread(weight, grad)),
                                        scalar(unexplained_cosine(weight, grad, stats))]))
            unit_stats.append(stats.get("units", ([], torch.empty(0, 2 + len(PERCENTILES)))))
        values = torch.stack(scalars).tolist()  # one read-back for every layer's scalars
        for i, ((grad_norm, output_norm, gamma, weight_norm, cosine, median_cosine, unexplained), (units, table)) in \
                enumerate(zip(values, unit_stats), start=1):
            layer_rows.append({"step": step, "layer": i, "weight_grad_norm": grad_norm,
                               "output_grad_norm": output_norm, "gamma_over_sigma": gamma,
                               "unit_mean_change": math.nan, "unit_var_change": math.nan,
                               "weight_norm": weight_norm, "weight_grad_cos": cosine,
                               "weight_grad_cos_p50": median_cosine, "unexplained_cos": unexplained})
            names = ["mean", "var", *(f"p{p:02d}" for p in PERCENTILES)]
            for unit, row in zip(units, table.tolist()):
                unit_rows.append({"step": step, "layer": i, "unit": unit, **dict(zip(names, row))})
        self._stats.clear()


# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, transform, loss, regression: bool,
             summed: bool, chunk: int = 1000) -> tuple[float, float]:
    """Loss and accuracy in eval mode (running statistics, no noise, no dropout).

    The loss is combined over the samples as in training: the sum over them when the run's loss
    is summed (the DLN), else the mean."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], chunk):
        xb, yb = transform(x[start:start + chunk]), y[start:start + chunk]
        out = model(xb)
        value = loss(out, yb).item()
        total_loss += value if summed else value * xb.shape[0]
        if not regression:
            correct += (out.argmax(1) == yb).sum().item()
    model.train(was_training)
    n = x.shape[0]
    return (total_loss if summed else total_loss / n), (math.nan if regression else correct / n)


# ----------------------------------------------------------------------------------------------
# losses and accuracies: deferred read-back, windows, divergence


class Window:
    """A running mean of (loss, accuracy) over the steps since it was last taken."""

    def __init__(self, state: dict | None = None):
        self.loss, self.accuracy, self.count = (state or {}).get("sums", (0.0, 0.0, 0))

    def add(self, loss: float, accuracy: float) -> None:
        self.loss, self.accuracy, self.count = self.loss + loss, self.accuracy + accuracy, self.count + 1

    def take(self) -> tuple[float, float]:
        mean = (self.loss / self.count, self.accuracy / self.count) if self.count else (math.nan, math.nan)
        self.loss, self.accuracy, self.count = 0.0, 0.0, 0
        return mean

    def state(self) -> dict:
        return {"sums": (self.loss, self.accuracy, self.count)}


class Readback:
    """Per-step training-mode losses and accuracies, read back to the host in batches.

    On CUDA a `.item()` per step stalls the host every step (measured on an H200: the VGG-11 x0.25
    loop at 0.75x its compute ceiling). Values stay on the device and are read back in one sync
    every `interval` steps (every step on the CPU, where it is free) and before anything that must not
    see a diverged step: a checkpoint, an evaluation, layer statistics, a progress line, the end.
    A non-finite loss found late still ends the run at its own step; steps taken after it on the
    device are never saved. Read values go into two windows: `train` (a train.csv row every
    `log.train_every` steps) and `since_eval` (the train_batches row of the next evaluation).
    """

    def __init__(self, interval: int, train_every: int, state: dict | None = None):
        self.interval, self.train_every = interval, train_every
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        state = state or {}
        self.train = Window(state.get("train"))
        self.since_eval = Window(state.get("since_eval"))
        self.last_loss = math.nan

    def state(self) -> dict:
        return {"train": self.train.state(), "since_eval": self.since_eval.state()}

    def add(self, step: int, loss: torch.Tensor, accuracy: torch.Tensor | None) -> None:
        self.pending.append((step, loss.detach(), None if accuracy is None else accuracy.detach()))

    def due(self) -> bool:
        return len(self.pending) >= self.interval

    def flush(self, rows: list[dict], log_metrics, log) -> int | None:
        """Move pending values into train.csv rows; return the step of the first non-finite loss."""
        if not self.pending:
            return None
        losses = [loss.float() for _, loss, _ in self.pending]
        accuracies = [acc for _, _, acc in self.pending if acc is not None]
        values = torch.stack(losses + accuracies).tolist()  # one host sync for all of them
        read_acc = iter(values[len(losses):])
        read = [(step, value, next(read_acc) if acc is not None else math.nan)
                for (step, _, acc), value in zip(self.pending, values)]
        self.pending.clear()
        for step, loss, accuracy in read:
            if not math.isfinite(loss):
                rows.append({"step": step, "loss": loss, "accuracy": math.nan})
                log(f"step {step}: loss is {loss}; the run diverged and ends here")
                return step
            self.last_loss = loss
            self.train.add(loss, accuracy)
            self.since_eval.add(loss, accuracy)
            if (step + 1) % self.train_every == 0:
                mean_loss, mean_accuracy = self.train.take()
                rows.append({"step": step, "loss": mean_loss, "accuracy": mean_accuracy})
                log_metrics({"train_loss": mean_loss,
                             **({} if math.isnan(mean_accuracy) else {"train_accuracy": mean_accuracy})}, step)
        return None


# ----------------------------------------------------------------------------------------------
# the run


class NullTracker:
    """What `train` calls when MLflow is off (bnstudy.tracking.runs provides the real one)."""

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
    # the tables are on disk before tracking is waited for (bounded: bnstudy.tracking.runs); the
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
