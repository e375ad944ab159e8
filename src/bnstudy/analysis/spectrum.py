"""The Hessian's extreme eigenvalues, trace and gradient concentration at a checkpoint (Ghorbani,
Krishnan & Xiao 2019; Cohen et al. 2021 for the largest eigenvalue, the "sharpness").

Per checkpoint, from one `hessian.Hessian`:
- the `top_k` largest eigenvalues and (if `smallest`) the smallest, by Lanczos (scipy's eigsh),
  each with its relative residual ||H v - lambda v|| / |lambda|;
- the share of ||g||^2 in the span of the top 1..k eigenvectors (Ghorbani et al.: without
  BatchNorm the gradient concentrates in the few outlier directions);
- tr(H) by Hutchinson's estimator with `trace_probes` Rademacher probes, and its standard error
  (0 probes: skipped).

One row per eigenvalue: rank 1..top_k from the top, rank -1 for the smallest; the per-checkpoint
quantities (trace, its standard error) repeat on every row of the step.
"""

from __future__ import annotations

from .functional import Origin
from .hessian import Flat, Hessian, extreme_eigenpairs, gradient_share, hutchinson_trace


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {rank, eigenvalue, residual, converged, gradient_share, trace, trace_se, products}."""
    hessian = Hessian(origin.objective, origin.params)
    top = extreme_eigenpairs(hessian, settings["top_k"], "LA", settings["tol"], settings["max_products"],
                             settings["seed"])
    shares = gradient_share(hessian.gradient, top["vectors"], Flat(hessian))
    shares += [float("nan")] * (settings["top_k"] - len(shares))
    trace, trace_se = (hutchinson_trace(hessian, settings["trace_probes"], settings["seed"])
                       if settings["trace_probes"] else (float("nan"), float("nan")))
    rows = [{"rank": i + 1, "eigenvalue": value, "residual": residual, "converged": top["converged"],
             "gradient_share": share}
            for i, (value, residual, share) in enumerate(zip(top["values"], top["residuals"], shares))]
    if settings["smallest"]:
        bottom = extreme_eigenpairs(hessian, 1, "SA", settings["tol"], settings["max_products"], settings["seed"])
        rows.append({"rank": -1, "eigenvalue": bottom["values"][0], "residual": bottom["residuals"][0],
                     "converged": bottom["converged"], "gradient_share": float("nan")})
    for row in rows:
        row.update(bn_mode=settings["bn_mode"], trace=trace, trace_se=trace_se, products=hessian.products)
    return rows
