"""The Hessian of the analysis loss at a checkpoint, as Hessian-vector products: the one operator
every curvature and spectral measure shares.

H v is computed by double backward (Pearlmutter's trick, as PyHessian and loss-landscape do): one
forward and backward with `create_graph=True` builds the gradient g as a differentiable function
of the weights, then each H v is one more backward through that retained graph, with no new
forward. With BatchNorm in training mode this is the exact Hessian of the loss SGD descends (batch
statistics are functions of the weights and are differentiated through); it agrees with finite
differences to ~1e-8 in float64 (tests/test_analysis_math.py). The checkpoint's running statistics
are never touched: `functional.Objective` clones the buffers for every forward.

L is `functional.Objective`'s loss (the mean over the analysis batches); with several batches the
graph of all of them is kept, so memory grows with `batches`.
"""

from __future__ import annotations

import math

import torch

from .functional import Objective, Params, dot, norm


class Hessian:
    """H at `params` as an operator on parameter dicts: `hessian(v)` is H v.

    Building it costs one forward and backward (create_graph); each product one double backward.
    `gradient` is g at `params` (detached); `products` counts the products taken.
    """

    def __init__(self, objective: Objective, params: Params):
        self.names = list(params)
        self._leaves = [params[k].detach().requires_grad_(True) for k in self.names]
        point = dict(zip(self.names, self._leaves))
        n = len(objective.batches)
        loss = sum(objective.batch_loss(point, b) for b in range(n)) / n
        g = torch.autograd.grad(loss, self._leaves, create_graph=True, allow_unused=True)
        self._g = [torch.zeros_like(leaf) if gi is None else gi for leaf, gi in zip(self._leaves, g)]
        self.gradient: Params = {k: gi.detach() for k, gi in zip(self.names, self._g)}
        self.products = 0

    def __call__(self, v: Params) -> Params:
        """H v (a new dict; v is not written)."""
        self.products += 1
        hv = torch.autograd.grad(self._g, self._leaves, grad_outputs=[v[k] for k in self.names],
                                 retain_graph=True, allow_unused=True)
        return {k: torch.zeros_like(v[k]) if h is None else h.detach() for k, h in zip(self.names, hv)}

    def quadratic_form(self, v: Params) -> float:
        """v^T H v / ||v||^2: the curvature along v (NaN for v = 0)."""
        v_sq = dot(v, v)
        return dot(v, self(v)) / v_sq if v_sq > 0 else float("nan")


def random_unit(params: Params, seed: int) -> Params:
    """A Gaussian direction of norm 1, drawn in float64 on the CPU from `seed` and cast, so every
    device and dtype starts from the same vector."""
    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
         for k, p in params.items()}
    scale = norm(v)
    return {k: t / scale for k, t in v.items()}


def power_iteration(hessian: Hessian, start: Params, iters: int, tol: float) -> tuple[float, int, bool]:
    """(eigenvalue of largest magnitude, sign kept; iterations; converged) from `start` (norm 1).

    Converged = the Rayleigh quotient changed by at most tol * |value| between iterations.
    """
    v = start
    eig, used, converged = float("nan"), 0, False
    for used in range(1, iters + 1):
        hv = hessian(v)
        new = dot(v, hv)  # Rayleigh quotient, ||v|| = 1
        hv_norm = norm(hv)
        converged = math.isfinite(eig) and abs(new - eig) <= tol * abs(new)
        eig = new
        if hv_norm == 0:  # v is in the null space: the top eigenvalue along it is exactly 0
            converged = True
        if converged or hv_norm == 0 or not math.isfinite(hv_norm):
            break
        v = {k: t / hv_norm for k, t in hv.items()}
    return eig, used, converged
