"""Curvature of the loss at a checkpoint, Santurkar et al. 2018 section 4 (Theorem 4.2 and the
Hessian spectrum).

- grad_quadratic = g^T H g / ||g||^2, the curvature along the gradient (Theorem 4.2's quadratic
  form), with g and H the gradient and Hessian of L over all parameters.
- top_eigenvalue: the Hessian eigenvalue of largest magnitude (sign kept), by power iteration
  from a seeded random start. Near a trained network's weights the largest positive eigenvalue
  dominates, which is what "top eigenvalue" means in practice; a dominant negative one would show
  up as a negative value rather than be mistaken for a positive one. The table records the
  iterations used and whether the Rayleigh quotient converged (changed by at most tol * |value|):
  an unconverged value is an estimate, and the figures flag it.

Hessian-vector products use double backward: one forward and backward with create_graph builds
g as a differentiable function of the weights, then each H v is one more backward through that
retained graph (no new forward). L is `functional.Objective`'s loss (mean over the analysis
batches); with several batches the graph of all of them is kept, so memory grows with `batches`.
"""

from __future__ import annotations

import math

import torch

from .functional import Objective, Params, dot, norm


def _gradient_graph(objective: Objective, params: Params) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(leaves, g) with g = dL/dleaves differentiable (create_graph) for Hessian-vector products."""
    leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    n = len(objective.batches)
    loss = sum(objective.batch_loss(leaves, b) for b in range(n)) / n
    names = list(leaves)
    g = torch.autograd.grad(loss, [leaves[k] for k in names], create_graph=True, allow_unused=True)
    g = [torch.zeros_like(leaves[k]) if gi is None else gi for k, gi in zip(names, g)]
    return [leaves[k] for k in names], g


def curvature(objective: Objective, params: Params, settings: dict) -> dict:
    """{grad_quadratic, top_eigenvalue, power_iters, converged} at `params`.

    settings: power_iters (max Hessian-vector products of the power iteration), tol (stop when
    the Rayleigh quotient changes by at most tol * |value| between iterations), seed (start
    vector, drawn in float64 on the CPU so every device and dtype starts alike).
    Cost: one forward + backward(create_graph), then 1 + (at most power_iters) double backwards.
    """
    leaves, g = _gradient_graph(objective, params)
    names = list(params)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        hv = torch.autograd.grad(g, leaves, grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(x) if h is None else h.detach() for x, h in zip(v, hv)]

    as_dict = lambda ts: dict(zip(names, ts))  # noqa: E731  (dot/norm work on dicts)
    g_det = [t.detach() for t in g]
    g_sq = dot(as_dict(g_det), as_dict(g_det))
    quad = dot(as_dict(g_det), as_dict(hvp(g_det))) / g_sq if g_sq > 0 else float("nan")

    gen = torch.Generator().manual_seed(settings["seed"])
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
         for p in params.values()]
    v_norm = norm(as_dict(v))
    v = [t / v_norm for t in v]
    eig, iters, converged = float("nan"), 0, False
    for iters in range(1, settings["power_iters"] + 1):
        hv = hvp(v)
        new = dot(as_dict(v), as_dict(hv))  # Rayleigh quotient, ||v|| = 1
        hv_norm = norm(as_dict(hv))
        converged = math.isfinite(eig) and abs(new - eig) <= settings["tol"] * abs(new)
        eig = new
        if hv_norm == 0:  # v is in the null space: the top eigenvalue along it is exactly 0
            converged = True
        if converged or hv_norm == 0 or not math.isfinite(hv_norm):
            break
        v = [t / hv_norm for t in hv]
    return {"grad_quadratic": quad, "top_eigenvalue": eig, "power_iters": iters, "converged": converged}
