"""The Hessian's extreme eigenvalues, trace and gradient concentration at a checkpoint (Ghorbani,
Krishnan & Xiao 2019; Cohen et al. 2021 for the largest eigenvalue, the "sharpness").

Per checkpoint and normaliser mode (`bn_mode`: "batch", "running" or a list of both), from one
`hessian.Hessian` of the loss on `samples` = batch_size x batches training samples:
- the `top_k` largest eigenvalues and (if `smallest`) the smallest, by Lanczos (scipy's eigsh),
  each with its relative residual ||H v - lambda v|| / |lambda| and its own `converged` flag
  (residual <= tol). top_k defaults to 20: Ghorbani et al. find about C outliers for C classes, and
  the outlier group is told by its gap among the top 2C (C = 10 for CIFAR-10);
- the share of ||g||^2 in the span of the top 1..k eigenvectors, g the gradient of the same loss
  (Ghorbani et al.: without BatchNorm the gradient concentrates in the few outlier directions);
- tr(H) by Hutchinson's estimator with `trace_probes` Rademacher probes, and its standard error
  (0 probes: skipped).

One row per eigenvalue: rank 1..top_k from the top, rank -1 for the smallest; the per-checkpoint
quantities (trace, its standard error, products, samples) repeat on every row of the step and mode.
With a list of modes each mode's rows come from the origin set afresh in that mode
(`functional.per_mode`): Ghorbani et al. find that the outliers BatchNorm removes return with
whole-data (running) statistics, so the two modes are the comparison.
"""

from __future__ import annotations

from .functional import Origin, per_mode
from .hessian import Flat, Hessian, extreme_eigenpairs, gradient_share, hutchinson_trace


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {bn_mode, rank, eigenvalue, residual, converged, gradient_share, trace, trace_se,
    products, samples}, every mode of settings["bn_mode"] in turn."""
    rows = []
    for mode, probe in per_mode(origin, settings):
        rows += mode_rows(probe, settings, mode)
    return rows


def mode_rows(origin: Origin, settings: dict, mode: str) -> list[dict]:
    """The rows of one mode (`origin` already in it); the Hessian is freed on return, so only one
    mode's graph is alive at a time."""
    hessian = Hessian(origin.objective, origin.params)
    top = extreme_eigenpairs(hessian, settings["top_k"], "LA", settings["tol"], settings["max_products"],
                             settings["seed"])
    shares = gradient_share(hessian.gradient, top["vectors"], Flat(hessian))
    shares += [float("nan")] * (settings["top_k"] - len(shares))
    trace, trace_se = (hutchinson_trace(hessian, settings["trace_probes"], settings["seed"])
                       if settings["trace_probes"] else (float("nan"), float("nan")))
    rows = [{"rank": i + 1, "eigenvalue": value, "residual": residual, "converged": converged,
             "gradient_share": share}
            for i, (value, residual, converged, share)
            in enumerate(zip(top["values"], top["residuals"], top["pair_converged"], shares))]
    if settings["smallest"]:
        bottom = extreme_eigenpairs(hessian, 1, "SA", settings["tol"], settings["max_products"], settings["seed"])
        rows.append({"rank": -1, "eigenvalue": bottom["values"][0], "residual": bottom["residuals"][0],
                     "converged": bottom["pair_converged"][0], "gradient_share": float("nan")})
    for row in rows:
        row.update(bn_mode=mode, trace=trace, trace_se=trace_se, products=hessian.products,
                   samples=hessian.samples)
    return rows
