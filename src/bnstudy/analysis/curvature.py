"""Curvature of the loss at a checkpoint, Santurkar et al. 2018 section 4 (Theorem 4.2 and the
Hessian spectrum).

- grad_quadratic = g^T H g / ||g||^2, the curvature along the gradient (Theorem 4.2's quadratic
  form), with g and H the gradient and Hessian of L over all parameters.
- top_eigenvalue and bottom_eigenvalue: the largest and the smallest (most negative) eigenvalue of
  H, each by Lanczos (`hessian.extreme_eigenvalue`), with the relative residual
  ||H v - lambda v|| / |lambda| of the returned eigenvector. Both matter: the largest bounds the
  stable step size of gradient descent, the smallest says how far from convex the point is.
  (A power iteration would return the eigenvalue of largest *magnitude*, which near
  initialisation can be a large negative one.) `converged` is false when either search ran out of
  its product budget before meeting `tol`; the figures flag those points.

All come from one `hessian.Hessian` (one forward and backward, then a double backward per product).
"""

from __future__ import annotations

from .functional import Origin
from .hessian import Hessian, extreme_eigenvalue


def compute(origin: Origin, settings: dict) -> list[dict]:
    """One row {grad_quadratic, top_eigenvalue, top_residual, bottom_eigenvalue, bottom_residual,
    products, converged}.

    settings: tol (ARPACK's relative tolerance), max_products (Hessian-vector products each
    eigenvalue search may take), seed (its start vector).
    """
    hessian = Hessian(origin.objective, origin.params)
    row = {"grad_quadratic": hessian.quadratic_form(hessian.gradient)}
    converged = True
    for name, which in (("top", "LA"), ("bottom", "SA")):
        found = extreme_eigenvalue(hessian, which, settings["tol"], settings["max_products"], settings["seed"])
        row[f"{name}_eigenvalue"], row[f"{name}_residual"] = found["value"], found["residual"]
        converged &= found["converged"]
    row.update(products=hessian.products, converged=converged)
    return [row]
