"""Plain SGD (momentum, weight decay): torch.optim.SGD's update and state-dict format, without its
start-up cost.

Why not torch.optim.SGD itself: its methods are wrapped to stay out of torch.compile, and the first
call of such a wrapper imports torch._dynamo, 1.4-1.8 s of every training job's start-up on the
2-core build machine (measured: `torch.optim.SGD(...)` right after `import torch`), as much as
importing torch. The update below is torch's single-tensor SGD (dampening 0, no Nesterov, no
maximize) written with the same tensor operations, applied to all parameters with one foreach
call per operation (torch's multi-tensor path: fewer kernel launches on a GPU). tests/test_train.py
checks that parameters, momentum buffers and state dicts match torch.optim.SGD bit for bit, and
checkpoints written by either load into the other.
"""

from __future__ import annotations

import torch


class SGD:
    """x <- x - lr * v with v = g + weight_decay * x, or the momentum buffer b <- m * b + v.

    `masks` (optim.train_only, `bnstudy.models.networks.training_masks`), one per parameter: None = all of
    it trains, False = frozen (skipped like a parameter without a gradient: no weight decay, no
    momentum buffer), a boolean tensor = only those entries train: v is zeroed elsewhere after the
    weight decay is added and before the momentum buffer takes it, so the other entries' update is
    exactly 0 and they stay bit for bit at their initial values."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 masks: list | None = None):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)
        self.masks = list(masks) if masks is not None else [None] * len(self.params)
        if len(self.masks) != len(self.params):
            raise ValueError(f"{len(self.masks)} masks for {len(self.params)} parameters")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        index = [i for i, p in enumerate(self.params) if p.grad is not None and self.masks[i] is not False]
        params = [self.params[i] for i in index]
        grads = [p.grad for p in params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if any(self.masks[i] is not None for i in index):
            grads = [grad if self.masks[i] is None else torch.where(self.masks[i], grad, 0.0)
                     for i, grad in zip(index, grads)]
        if self.momentum:
            old, old_grads = [], []
            for i, grad in zip(index, grads):
                if self.buffers[i] is None:  # the first step's buffer is the gradient itself, as in torch
                    self.buffers[i] = torch.clone(grad).detach()
                else:
                    old.append(self.buffers[i])
                    old_grads.append(grad)
            if old:
                torch._foreach_mul_(old, self.momentum)
                torch._foreach_add_(old, old_grads, alpha=1.0)
            grads = [self.buffers[i] for i in index]
        torch._foreach_add_(params, grads, alpha=-self.lr)

    def state_dict(self) -> dict:
        """In torch.optim.SGD's format (the analyses read lr and momentum buffers from it)."""
        state = {i: {"momentum_buffer": b} for i, b in enumerate(self.buffers) if b is not None}
        group = {"lr": self.lr, "momentum": self.momentum, "dampening": 0, "weight_decay": self.weight_decay,
                 "nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                 "fused": None, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state: dict) -> None:
        (group,) = state["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"optimizer state for {len(group['params'])} parameters, model has {len(self.params)}")
        self.lr, self.momentum, self.weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        self.buffers = [None] * len(self.params)
        for i, entry in state["state"].items():
            buf = entry.get("momentum_buffer")
            if buf is not None:
                self.buffers[int(i)] = buf.to(device=self.params[int(i)].device, dtype=self.params[int(i)].dtype)
