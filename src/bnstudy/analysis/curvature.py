"""Curvature of the loss at a checkpoint, Santurkar et al. 2018 section 4 (Theorem 4.2 and the
Hessian spectrum).

- grad_quadratic = g^T H g / ||g||^2, the curvature along the gradient (Theorem 4.2's quadratic
  form), with g and H the gradient and Hessian of L over all parameters.
- top_eigenvalue: the Hessian eigenvalue of largest magnitude (sign kept), by power iteration
  from a seeded random start. The table records the iterations used and whether the Rayleigh
  quotient converged (changed by at most tol * |value|): an unconverged value is an estimate, and
  the figures flag it.

Both come from one `hessian.Hessian` (one forward and backward, then a double backward per
product).
"""

from __future__ import annotations

from .functional import Origin
from .hessian import Hessian, power_iteration, random_unit


def compute(origin: Origin, settings: dict) -> list[dict]:
    """One row {grad_quadratic, top_eigenvalue, power_iters, converged}.

    settings: power_iters (max products of the power iteration), tol, seed (the start vector).
    Cost: one forward + backward(create_graph), then 1 + (at most power_iters) double backwards.
    """
    hessian = Hessian(origin.objective, origin.params)
    quad = hessian.quadratic_form(hessian.gradient)
    start = random_unit(origin.params, settings["seed"])
    eig, iters, converged = power_iteration(hessian, start, settings["power_iters"], settings["tol"])
    return [{"grad_quadratic": quad, "top_eigenvalue": eig, "power_iters": iters, "converged": converged}]
