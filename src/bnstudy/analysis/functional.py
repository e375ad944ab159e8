"""Shared machinery of the checkpoint analyses: the loss as a pure function of a parameter dict.

Every analysis probes the training loss at points W + delta around a checkpoint's weights W (the
"origin"). Instead of copying the model per point, the origin is kept as a dict of tensors and each
point is evaluated with `torch.func.functional_call`, so one probe costs one forward(-backward)
and nothing else, and neither the model nor the origin tensors are ever written to.

What "the loss" means here (the same for ICS, landscape and curvature):
  L(W) = (1/B) * sum_b loss_fn(model_W(x_b), y_b) over the B analysis batches,
each batch forwarded on its own in training mode, so normalisation layers use that batch's
statistics (as in training). Gradients are gradients of this average, i.e. the mean of the
per-batch gradients. With B = 1 this is exactly the training loss on one batch.

BatchNorm in training mode updates its running statistics in place; every forward gets fresh
clones of the buffers, so the loaded buffers never change.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]


def origin_state(model: nn.Module) -> tuple[Params, Params]:
    """The model's parameters and buffers as detached tensors (same storage, no copy).

    The parameter dict is in `model.named_parameters()` order, which is also the optimizer's
    parameter order (docs/architecture.md); `sgd_step` relies on it.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return params, buffers


def all_finite(params: Params) -> bool:
    """False for a diverged checkpoint (any inf/nan parameter)."""
    return all(bool(torch.isfinite(p).all()) for p in params.values())


# ---------------------------------------------------------------------------------------------
# vector arithmetic on parameter dicts (the analyses treat all parameters as one flat vector)


def dot(a: Params, b: Params) -> float:
    """<a, b> over all entries, accumulated in float64 so that long vectors lose no precision."""
    return math.fsum(float(torch.sum(a[k].double() * b[k].double())) for k in a)


def norm(a: Params) -> float:
    """||a||_2 over all entries (float64 accumulation)."""
    return math.sqrt(math.fsum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
                               for t in a.values()))


def diff_norm(a: Params, b: Params) -> float:
    """||a - b||_2 without materialising the flat difference."""
    return norm({k: a[k] - b[k] for k in a})


def axpy(x: Params, alpha: float, d: Params) -> Params:
    """x + alpha * d as a new dict (out of place: the origin tensors are never written).

    torch.add(x, d, alpha=...) is the very arithmetic of torch.optim.SGD's `p.add_(d, alpha=-lr)`
    (one rounding, not two as x - (eta * d) would have), so a probe point is bit-identical to the
    weights an optimizer step of size eta would produce. That matters beyond the last bit:
    ReLU and max-pool decisions on near ties can flip on one ulp.
    """
    return {k: torch.add(x[k], d[k], alpha=alpha) if k in d else x[k] for k in x}


# ---------------------------------------------------------------------------------------------
# the objective


@dataclass
class Objective:
    """The analysis loss L (see module docstring) as a function of a parameter dict.

    model     a module in training mode (or entirely in eval mode when `statistics` is
              "running"); only its structure is used (`functional_call`)
    buffers   its buffers (running statistics); cloned for every forward, never written
    loss_fn   callable(outputs, targets) -> scalar
    batches   the fixed analysis batches [(x, y), ...]
    noise_seed  random modules still active (those with a `generator` attribute, see
              bnstudy.models.networks.set_generator: Algorithm 1's noise, dropout; active = training mode
              and not `enabled=False`) get a generator seeded from (noise_seed, batch index) for
              every forward, so every probe point sees the same noise draw (common random
              numbers): differences between probe points are then differences of the loss
              surface, not of the noise, and torch's global RNG is never used. Whether noise is
              on is decided by how the model was built (run.prepare_model), not here.
    statistics  "batch" (the default: normalisers use the batch's statistics, the loss SGD
              descends) or "running" (the checkpoint's running statistics, eval mode, what
              PyHessian and loss-landscape use): a named choice, because the two are different
              functions of the weights with different Hessians.
    """

    model: nn.Module
    buffers: Params
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    batches: list[Batch]
    noise_seed: int = 0
    statistics: str = "batch"
    _random_modules: list[nn.Module] = field(init=False, repr=False)

    def __post_init__(self):
        if not self.batches:
            raise ValueError("an Objective needs at least one batch")
        if self.statistics == "running":
            if any(m.training for m in self.model.modules()):
                raise ValueError("running statistics: the model must be in eval mode")
            self._random_modules = []
            return
        if self.statistics != "batch":
            raise ValueError(f"statistics {self.statistics!r}: use batch or running")
        stale = [n for n, m in self.model.named_modules() if not m.training]
        if stale:
            # Eval mode would use running statistics: a different loss than the one trained.
            # Stochastic modules switched off on purpose (noise/dropout) are the exception.
            stale = [n for n in stale if not hasattr(self.model.get_submodule(n), "generator")]
        if stale:
            raise ValueError(f"analyses run in training mode (batch statistics); modules in eval "
                             f"mode: {stale[:5]}")
        self._random_modules = [m for m in self.model.modules()
                                if hasattr(m, "generator") and m.training
                                and getattr(m, "enabled", True)]

    @property
    def samples(self) -> int:
        """How many training samples L averages over (batch_size x batches for the analysis
        batches): the sample count a Hessian or gradient of L is computed on."""
        return sum(int(x.shape[0]) if x.dim() else 1 for x, _ in self.batches)

    def with_statistics(self, statistics: str, noise: bool = False) -> Objective:
        """This loss with the normalisers on `statistics` ("batch" or "running"): itself if it
        already is, else an objective on a copy of the module tree switched to that mode, as
        `run.prepare_model` would have built it (running: all of it in eval mode; batch: training
        mode, random modules off unless `noise`).

        Why a copy: the model is shared by every analysis of the step (run.Probes), and flipping
        its train/eval flags would change what the others compute. The copy shares the parameter
        and buffer tensors (functional_call never reads them: the probe point and the cloned
        buffers are passed in), so it costs no memory for the weights.
        """
        if statistics == self.statistics:
            return self
        if statistics not in ("batch", "running"):
            raise ValueError(f"statistics {statistics!r}: use batch or running")
        shared = itertools.chain(self.model.parameters(), self.model.buffers())
        model = copy.deepcopy(self.model, memo={id(t): t for t in shared})
        if statistics == "running":
            model.eval()
        else:
            model.train()
            for module in model.modules():
                if hasattr(module, "generator") and not noise:
                    module.eval()
        return dataclasses.replace(self, model=model, statistics=statistics)

    # -- one batch -------------------------------------------------------------------------------

    def batch_outputs(self, params: Params, index: int) -> Tensor:
        """The network's outputs on batch `index` at `params` (differentiable wrt params)."""
        x, _ = self.batches[index]
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        with self._noise(index, x.device):
            return functional_call(self.model, (params, buffers), (x,))

    def batch_loss(self, params: Params, index: int) -> Tensor:
        """loss_fn on batch `index` at `params` (differentiable wrt params)."""
        return self.loss_fn(self.batch_outputs(params, index), self.batches[index][1])

    def evaluate(self, params: Params) -> tuple[float, float]:
        """(L(params), accuracy) averaged over the batches, no gradient; accuracy is NaN for
        regression targets."""
        losses, correct, total = [], 0, 0
        with torch.no_grad():
            for b in range(len(self.batches)):
                y = self.batches[b][1]
                out = self.batch_outputs(params, b)
                losses.append(float(self.loss_fn(out, y)))
                if not y.is_floating_point():
                    correct += int((out.argmax(1) == y).sum())
                    total += y.numel()
        return math.fsum(losses) / len(losses), (correct / total if total else float("nan"))

    @contextmanager
    def _noise(self, index: int, device: torch.device):
        """Seed the random modules for this forward, restore their generators afterwards."""
        if not self._random_modules:
            yield
            return
        saved = [m.generator for m in self._random_modules]
        gen = torch.Generator(device=device).manual_seed(self.noise_seed * 1_000_003 + index)
        try:
            for m in self._random_modules:
                m.generator = gen
            yield
        finally:
            for m, g in zip(self._random_modules, saved):
                m.generator = g

    # -- the averaged loss -----------------------------------------------------------------------

    def value(self, params: Params) -> float:
        """L(params), no gradient."""
        with torch.no_grad():
            losses = [float(self.batch_loss(params, b)) for b in range(len(self.batches))]
        return math.fsum(losses) / len(losses)

    def value_and_grad(self, params: Params, wrt: Iterable[str] | None = None) -> tuple[float, Params]:
        """L(params) and dL/dp for p in `wrt` (default: all parameters).

        Only the `wrt` tensors require grad, so autograd builds (and back-propagates through) only
        the part of the graph that depends on them: for ICS's G' of layer i the backward stops at
        layer i. Batches are back-propagated one at a time (memory of one batch), gradients summed.
        """
        names = list(params) if wrt is None else list(wrt)
        n = len(self.batches)
        losses, grads = [], None
        for b in range(n):
            point = dict(params)
            leaves = {k: params[k].detach().requires_grad_(True) for k in names}
            point.update(leaves)
            loss = self.batch_loss(point, b)
            g = torch.autograd.grad(loss / n, list(leaves.values()), allow_unused=True)
            g = [torch.zeros_like(leaves[k]) if gi is None else gi for k, gi in zip(names, g)]
            grads = g if grads is None else [a + c for a, c in zip(grads, g)]
            losses.append(float(loss.detach()))
        return math.fsum(losses) / n, dict(zip(names, grads))


# ---------------------------------------------------------------------------------------------
# the optimizer's step


def sgd_step(params: Params, grads: Params, optimizer_state: dict | None, fallback: dict) -> Params:
    """The parameters after the update torch.optim.SGD would make from this state (out of place).

    For each parameter p with gradient g (torch SGD semantics):
        d = g + wd * p
        momentum m > 0:  buf' = d if no buffer yet, else m * buf + (1 - dampening) * d
                         d = d + m * buf' (nesterov) or d = buf'
        p' = p - lr * d
    Hyper-parameters and momentum buffers come from the checkpoint's optimizer state dict
    (`optimizer_state`, whose integer parameter ids follow `params`' order, i.e.
    model.named_parameters()); `fallback` (the run spec's "optim": lr, momentum, weight_decay) is
    used when there is no state. Only parameters present in `grads` are stepped.
    """
    names = list(params)
    hyper: dict[str, dict] = {}
    buffers: dict[str, Tensor | None] = {}
    if optimizer_state:
        ids = sorted(i for group in optimizer_state["param_groups"] for i in group["params"])
        if ids != list(range(len(names))):
            raise ValueError(f"optimizer state covers parameter ids {ids[:3]}..{ids[-3:]}, the "
                             f"model has {len(names)} parameters: not SGD(model.parameters())")
        for group in optimizer_state["param_groups"]:
            for idx in group["params"]:
                hyper[names[idx]] = group
        for idx, st in optimizer_state.get("state", {}).items():
            buffers[names[int(idx)]] = st.get("momentum_buffer")
    out = {}
    for name, g in grads.items():
        # The same tensor operations as torch.optim.SGD (single-tensor path), out of place, so
        # the stepped weights match a real step to the last bit.
        h = hyper.get(name, fallback)
        p = params[name]
        d = -g if h.get("maximize", False) else g
        wd = h.get("weight_decay", 0.0) or 0.0
        if wd:
            d = torch.add(d, p, alpha=wd)
        m = h.get("momentum", 0.0) or 0.0
        if m:
            buf = buffers.get(name)
            if buf is None:
                buf = d
            else:
                buf = torch.add(torch.mul(buf.to(d.device, d.dtype), m), d,
                                alpha=1 - h.get("dampening", 0.0))
            d = torch.add(d, buf, alpha=m) if h.get("nesterov", False) else buf
        out[name] = torch.add(p, d, alpha=-h["lr"])
    return out


# ---------------------------------------------------------------------------------------------
# the origin of every probe


@dataclass
class Origin:
    """A checkpoint as every analysis sees it: the loss as a function of the parameters, the stored
    weights (never written: every probe point is set fresh from them), the normalised layers'
    parameter names, and what the run's optimizer would do next (for ICS's update)."""

    objective: Objective
    params: Params
    layer_groups: list[list[str]]
    optimizer_state: dict | None
    optim: dict  # the run spec's optim block: lr, momentum, weight_decay when there is no state

    @property
    def lr(self) -> float:
        """The learning rate of the run's optimizer at this checkpoint."""
        groups = (self.optimizer_state or {}).get("param_groups") or [self.optim]
        return groups[0]["lr"]

    def step(self, grads: Params) -> Params:
        """The parameters after the update the run's optimizer would make with `grads`."""
        return sgd_step(self.params, grads, self.optimizer_state, self.optim)

    def with_statistics(self, statistics: str, noise: bool = False) -> Origin:
        """The same checkpoint with the normalisers on `statistics` (`Objective.with_statistics`):
        the stored weights and buffers, the live model untouched."""
        objective = self.objective.with_statistics(statistics, noise)
        return self if objective is self.objective else dataclasses.replace(self, objective=objective)


# ---------------------------------------------------------------------------------------------
# the normalisers' mode (bn_mode)


def bn_modes(settings: dict) -> list[str]:
    """settings["bn_mode"] as a list of modes: a plain string (the default "batch") is one mode; a
    list asks for the analysis in each (Ghorbani et al. 2019, section 4 here: the outliers BN
    removes with batch statistics return with whole-data, i.e. running, statistics)."""
    mode = settings.get("bn_mode") or "batch"
    return [mode] if isinstance(mode, str) else list(mode)


def per_mode(origin: Origin, settings: dict) -> Iterator[tuple[str, Origin]]:
    """(mode, the origin in that mode) for every mode of `bn_modes(settings)`, each derived afresh
    from `origin`'s stored weights and buffers (never by switching the live model's mode), one at
    a time so that only one mode's probes are alive at once."""
    for mode in bn_modes(settings):
        yield mode, origin.with_statistics(mode, bool(settings.get("noise", False)))
