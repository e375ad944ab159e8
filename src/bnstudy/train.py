"""The training loop: one run (variant x lr x seed x setup), resumable and deterministic.

Design choices, each for a reason:
- The prepared uint8 tensors sit on the training device and batch t is a pure function of
  (seed, t) (`BatchSampler`); augmentation and the noise/dropout generators are reseeded from
  (seed, t) each step. So a job killed at any point and restarted from its last checkpoint draws
  exactly what an uninterrupted run would, and on CPU ends with identical metrics.
- Metric rows are kept in memory and stored in every checkpoint; the CSV tables are written once,
  atomically, at the end. A killed job leaves no half-written table.
- Divergence is a result: a non-finite loss ends the run, marks it diverged, and the outputs are
  still written so the rest of the DAG (and the figures) go on.
- Activation statistics are taken with temporary hooks, only on recording steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

from .atomic import atomic_write
from .checkpoint import checkpoint_path, latest_good_checkpoint, list_checkpoints, save_checkpoint
from .data import BatchSampler, InputTransform, augment, load_prepared, step_generator
from .models import build_model, loss_fn, set_generator, uses_channels_last

PERCENTILES = (5, 15, 50, 85, 95)
READBACK_EVERY = {"cpu": 1}  # steps between reading losses back to the host; 32 elsewhere (see the loop)
MAX_STAT_SAMPLES = 1 << 16  # activations subsampled (deterministic stride) for percentiles


def resolve_device(runtime: dict) -> torch.device:
    """`auto` = CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    want = runtime["device"]
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but no CUDA device is visible; use auto or cpu")
    return torch.device(want)


def place_model(spec: dict, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The run's model on `device`, in channels_last when `uses_channels_last` says so."""
    channels_last = uses_channels_last(spec, device)
    model = build_model(spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX: oneDNN runs the
    convolutions in bf16); fp32/tf32 (or a CPU without bf16 units) runs as is."""
    if precision != "bf16":
        return contextlib.nullcontext()
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def conv_precision(device: torch.device, precision: str):
    """cuDNN's float32 convolutions: IEEE fp32 unless `precision` is tf32 (a fresh context each call).

    PyTorch lets cuDNN use TF32 (10-bit mantissa products) for float32 convolutions by default;
    the paper's 2018 GPUs had no TF32, so `fp32` means IEEE fp32 here and `tf32` is the opt-in
    for speed. (The analyses use `analysis.run.exact_numerics`: IEEE fp32 and deterministic.)
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                      benchmark=torch.backends.cudnn.benchmark,
                                      deterministic=torch.backends.cudnn.deterministic,
                                      allow_tf32=precision == "tf32")


def cpu_has_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ----------------------------------------------------------------------------------------------
# activation statistics


def _percentiles(values: torch.Tensor) -> list[float]:
    flat = values.reshape(-1).float()
    if flat.numel() > MAX_STAT_SAMPLES:
        flat = flat[:: flat.numel() // MAX_STAT_SAMPLES + 1]
    q = torch.tensor([p / 100 for p in PERCENTILES], device=flat.device)
    return torch.quantile(flat, q).tolist()


class LayerRecorder:
    """Hooks on each block that capture, for one step, what the figures need: the distribution of
    the non-linearity's input (all units, and unit 0), the gradient norm w.r.t. it, and for
    normalised layers mean |gamma_j| / sigma_j (Santurkar et al. Thm 4.1)."""

    def __init__(self, model):
        self.model = model
        self.stats: dict[int, dict] = {}
        self.handles = []

    def __enter__(self):
        for i, block in enumerate(self.model.blocks, start=1):
            self.handles.append(block.act.register_forward_pre_hook(self._activation_hook(i)))
            self.handles.append(block.norm.register_forward_pre_hook(self._norm_hook(i, block)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _activation_hook(self, layer: int):
        def hook(module, args):
            z = args[0]
            d = z.detach()
            pct = _percentiles(d)
            unit = _percentiles(d[:, 0])
            row = self.stats.setdefault(layer, {})
            row.update(mean=d.float().mean().item(), var=d.float().var().item(),
                       **{f"p{p:02d}": v for p, v in zip(PERCENTILES, pct)},
                       unit_p15=unit[1], unit_p50=unit[2], unit_p85=unit[3])
            if z.requires_grad:
                z.register_hook(lambda g: row.__setitem__("output_grad_norm", g.norm().item()))
        return hook

    def _norm_hook(self, layer: int, block):
        def hook(module, args):
            norm = module[0] if isinstance(module, torch.nn.Sequential) else module
            weight = getattr(norm, "weight", None)
            row = self.stats.setdefault(layer, {})
            if weight is None or not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                row["gamma_over_sigma"] = math.nan
                return
            x = args[0].detach().float()
            dims = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
            sigma = (x.var(dims, unbiased=False) + norm.eps).sqrt()
            row["gamma_over_sigma"] = (weight.detach().abs() / sigma).mean().item()
        return hook

    def rows(self, step: int) -> list[dict]:
        out = []
        for i, block in enumerate(self.model.blocks, start=1):
            grad = block.layer.weight.grad
            row = {"step": step, "layer": i, **self.stats.get(i, {})}
            row["weight_grad_norm"] = grad.norm().item() if grad is not None else math.nan
            row.setdefault("output_grad_norm", math.nan)
            out.append(row)
        self.stats.clear()
        return out


LAYER_COLUMNS = ["step", "layer", "mean", "var", "p05", "p15", "p50", "p85", "p95",
                 "weight_grad_norm", "output_grad_norm", "gamma_over_sigma",
                 "unit_p15", "unit_p50", "unit_p85"]


# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, transform, loss, regression: bool,
             chunk: int = 1000) -> tuple[float, float]:
    """Loss and accuracy in eval mode (running statistics, no noise)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], chunk):
        xb, yb = transform(x[start:start + chunk]), y[start:start + chunk]
        out = model(xb)
        total_loss += loss(out, yb).item() * xb.shape[0]
        if not regression:
            correct += (out.argmax(1) == yb).sum().item()
    model.train(was_training)
    n = x.shape[0]
    return total_loss / n, (math.nan if regression else correct / n)


# ----------------------------------------------------------------------------------------------
# outputs


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_fmt(row.get(c, math.nan)) for c in columns))
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    return str(value)


def write_json(path: Path, obj: dict) -> None:
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# the loop


class NullTracker:
    """What `train` calls when MLflow is off (bnstudy.tracking provides the real one)."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, status: str, summary: dict) -> None:
        pass

    def state(self) -> dict:
        return {"enabled": False}


def train(spec: dict, run_dir: Path, open_tracker=None, log=None, threads: int = 0) -> dict:
    """Train the run described by `spec` into `run_dir`, resuming from its last good checkpoint.

    `open_tracker(previous_run_id) -> tracker` is called once the checkpoint (if any) is loaded,
    so a resumed run continues the same MLflow run. Returns the summary written to summary.json.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run_dir = Path(run_dir)
    runtime = spec["runtime"]
    if threads or runtime["threads"]:
        torch.set_num_threads(runtime["threads"] or threads)
    device = resolve_device(runtime)
    optim = spec["optim"]
    steps, seed = optim["steps"], spec["seed"]

    data = load_prepared(spec["dataset"]["path"])
    _check_data(spec, data.meta)
    data = data.to(device)
    regression = data.task == "regression"
    model, channels_last = place_model(spec, device)
    transform = InputTransform(data.meta, device, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                          weight_decay=optim["weight_decay"])
    loss = loss_fn(spec)
    sampler = BatchSampler(data.train_x.shape[0], optim["batch_size"], seed, device)
    eval_n = spec["log"]["eval_samples"]
    eval_sets = {"test": (data.test_x[:eval_n], data.test_y[:eval_n]),
                 "train": (data.train_x[:eval_n], data.train_y[:eval_n])}
    if data.test_x.shape[0] == 0:
        del eval_sets["test"]

    metrics = {"train": [], "eval": [], "layers": []}
    start, previous_mlflow, elapsed = 0, None, 0.0
    state = latest_good_checkpoint(run_dir, warn=log)
    if state is not None:
        if state["spec"].get("run") != spec["run"]:
            raise RuntimeError(f"{run_dir}/checkpoints belong to run {state['spec'].get('run')}, "
                               f"not {spec['run']}: move them away")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, metrics = state["step"], state["metrics"]
        previous_mlflow, elapsed = state.get("mlflow_run_id"), state.get("wall_seconds", 0.0)
        log(f"resuming {spec['run']} from step {start}")
    tracker = open_tracker(previous_mlflow) if open_tracker else NullTracker()

    schedule = set(spec["checkpoints"])
    every = spec["log"]
    autocast = autocast_context(device, runtime["precision"])
    status, diverged_step = "completed", None
    model.train()
    t0, last_report, images = time.perf_counter(), time.perf_counter(), 0

    def checkpoint(done: int) -> None:
        save_checkpoint(checkpoint_path(run_dir, done), {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": done, "spec": spec,
            "rng": {"scheme": "per-step generators seeded from (seed, step, stream)", "seed": seed},
            "metrics": metrics, "mlflow_run_id": tracker.run_id,
            "wall_seconds": elapsed + time.perf_counter() - t0})

    def run_eval(done: int) -> None:
        logged = {}
        for split, (x, y) in eval_sets.items():
            l, a = evaluate(model, x, y, transform, loss, regression)
            metrics["eval"].append({"step": done, "split": split, "loss": l, "accuracy": a})
            logged.update({f"{split}_eval_loss": l, f"{split}_eval_accuracy": a})
        tracker.log_metrics({k: v for k, v in logged.items() if math.isfinite(v)}, done)

    # Loss and accuracy stay on the device until read back in one go: on CUDA a `.item()` per step
    # stalls the host every step (measured on an H200: the VGG-11 x0.25 loop at 0.75x its compute
    # ceiling). They are read back every step on the CPU (free there), else every 32 steps
    # and before anything that must not see a diverged step: a checkpoint, an evaluation, layer
    # statistics, a progress line, the end. A NaN found late still ends the run at its own step;
    # the steps taken after it on the device are never saved.
    readback = READBACK_EVERY.get(device.type, 32)
    pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
    last = {"loss": math.nan, "accuracy": math.nan}

    def read_back() -> int | None:
        """Move pending losses into the metrics; the step of the first non-finite one, if any."""
        if not pending:
            return None
        losses = [l.float() for _, l, _ in pending]
        accuracies = [a for _, _, a in pending if a is not None]
        values = torch.stack(losses + accuracies).tolist()  # one host sync for all of them
        read_acc = iter(values[len(losses):])
        done_ = [(step_, loss_value, next(read_acc) if a is not None else math.nan)
                 for (step_, _, a), loss_value in zip(pending, values)]
        pending.clear()
        for step_, loss_value, acc in done_:
            if not math.isfinite(loss_value):
                metrics["train"].append({"step": step_, "loss": loss_value, "accuracy": math.nan})
                log(f"step {step_}: loss is {loss_value}; the run diverged and ends here")
                return step_
            last["loss"] = loss_value
            if step_ % every["train_every"] == 0:
                last["accuracy"] = acc
                metrics["train"].append({"step": step_, "loss": loss_value, "accuracy": acc})
                tracker.log_metrics({"train_loss": loss_value,
                                     **({} if regression else {"train_accuracy": acc})}, step_)
        return None

    random_modules = any(hasattr(m, "generator") for m in model.modules())  # noise, dropout
    with conv_precision(device, runtime["precision"]):
        if start == 0:
            run_eval(0)
            if 0 in schedule:
                checkpoint(0)
        for step in range(start, steps):
            record = step % every["layers_every"] == 0
            if record and (diverged_step := read_back()) is not None:
                status = "diverged"
                break
            idx = sampler.indices(step)
            x, y = transform(data.train_x[idx]), data.train_y[idx]
            if spec["augment"]["crop"] or spec["augment"]["flip"]:
                x = augment(x, spec["augment"]["crop"], spec["augment"]["flip"],
                            step_generator(seed, step, 1, device))
            if random_modules:
                set_generator(model, step_generator(seed, step, 2, device))
            recorder = LayerRecorder(model) if record else contextlib.nullcontext()
            with recorder:
                with autocast:
                    out = model(x)
                    value = loss(out.float(), y)
                opt.zero_grad(set_to_none=True)
                value.backward()
            logged = step % every["train_every"] == 0 and not regression
            pending.append((step, value.detach(), (out.argmax(1) == y).float().mean() if logged else None))
            done = step + 1
            now = time.perf_counter()
            report = now - last_report > 10 or done == steps or done == start + 1
            must_read = (record or report or len(pending) >= readback or done in schedule
                         or done % every["eval_every"] == 0 or done == steps)
            if must_read and (diverged_step := read_back()) is not None:
                status = "diverged"
                break
            if record:
                metrics["layers"].extend(recorder.rows(step))
            opt.step()
            images += x.shape[0]
            if done % every["eval_every"] == 0 or done == steps:
                run_eval(done)
            if done in schedule:
                checkpoint(done)
            if report:
                rate = images / (now - t0)
                eta = (steps - done) * (now - t0) / max(done - start, 1)
                acc_text = "" if regression else f" acc {last['accuracy']:.3f}"
                log(f"[{spec['run']}] step {done}/{steps} loss {last['loss']:.4f}{acc_text} "
                    f"{rate:,.0f} img/s eta {eta:,.0f}s")
                last_report = now
        else:
            if (diverged_step := read_back()) is not None:
                status = "diverged"

    summary = finalise(spec, run_dir, metrics, status, diverged_step, str(device),
                       elapsed + time.perf_counter() - t0, tracker.run_id)
    # the tables are on disk before tracking is waited for (bounded); summary.json then records
    # whether tracking is complete (`bnstudy track` re-sends what is not)
    tracker.finish(status, summary)
    summary.update(mlflow_run_id=tracker.run_id, tracking=tracker.state())
    write_json(run_dir / "summary.json", summary)
    return summary


def _check_data(spec: dict, meta: dict) -> None:
    want = spec["dataset"]
    if want["task"] != meta["task"]:
        raise RuntimeError(f"{want['path']} is a {meta['task']} dataset, the run expects {want['task']}")
    if want["task"] == "classification" and (list(meta["shape"]) != want["shape"]
                                             or len(meta["classes"]) != want["classes"]):
        raise RuntimeError(f"{want['path']} holds {meta['shape']} images of {len(meta['classes'])} "
                           f"classes; config expects {want['shape']} and {want['classes']}: set "
                           f"datasets.{want['name']}.image_size/channels/classes to match")


def finalise(spec: dict, run_dir: Path, metrics: dict, status: str, diverged_step: int | None,
             device: str, wall: float, mlflow_run_id: str | None) -> dict:
    """Write the per-run tables, then summary.json last (it marks the run as done)."""
    write_json(run_dir / "spec.json", spec)
    write_csv(run_dir / "train.csv", metrics["train"], ["step", "loss", "accuracy"])
    write_csv(run_dir / "eval.csv", metrics["eval"], ["step", "split", "loss", "accuracy"])
    write_csv(run_dir / "layers.csv", metrics["layers"], LAYER_COLUMNS)
    last = {}
    for row in metrics["eval"]:
        last[row["split"]] = row
    nan = math.nan
    final = {f"{split}_{k}": (last[split][k] if split in last and status == "completed" else nan)
             for split in ("train", "test") for k in ("loss", "accuracy")}
    summary = {
        "run": spec["run"], "status": status,
        "steps_done": diverged_step if status == "diverged" else spec["optim"]["steps"],
        "diverged_step": diverged_step,
        "final": {k: (v if isinstance(v, float) and math.isfinite(v) else None) for k, v in final.items()},
        "checkpoints": [{"step": s, "path": str(p)} for s, p in list_checkpoints(run_dir)],
        "labels": {"variant": spec["norm"]["variant"], "lr": spec["optim"]["lr"], "seed": spec["seed"]},
        "wall_seconds": wall, "device": device, "mlflow_run_id": mlflow_run_id,
    }
    write_json(run_dir / "summary.json", summary)
    return summary
