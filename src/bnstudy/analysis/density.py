"""The Hessian's spectral density at a checkpoint by stochastic Lanczos quadrature (Ghorbani,
Krishnan & Xiao 2019; PyHessian): `starts` seeded start vectors, `lanczos_steps` Lanczos steps
each in float64 with full reorthogonalisation (`hessian.slq`). The reference used 80 steps x 10
starts.

The table holds the quadrature itself, one row per (mode, start, node): the node (a Ritz value)
and its weight (the weights of a start sum to 1). The density is the average over starts of the
weighted nodes smoothed with a Gaussian (`bnstudy.tables.derived.density_curve`), so its width is a
drawing choice, not a property of the table; n_params is recorded for the trace
n * sum(weight * node), samples for the number of training samples the Hessian's loss averages
over (batch_size x batches). `bn_mode` may be a list ("batch" and "running"): each mode's rows
come from the origin set afresh in that mode (`functional.per_mode`), Ghorbani et al.'s comparison
of batch with whole-data statistics.
"""

from __future__ import annotations

from .functional import Origin, per_mode
from .hessian import Hessian, slq


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {bn_mode, start, node, weight, n_params, samples}, every mode of settings["bn_mode"]."""
    rows = []
    for mode, probe in per_mode(origin, settings):
        rows += mode_rows(probe, settings, mode)
    return rows


def mode_rows(origin: Origin, settings: dict, mode: str) -> list[dict]:
    """The quadrature of one mode (`origin` already in it)."""
    hessian = Hessian(origin.objective, origin.params)
    n_params = sum(p.numel() for p in origin.params.values())
    rows = []
    for start, (nodes, weights) in enumerate(slq(hessian, settings["lanczos_steps"], settings["starts"],
                                                 settings["seed"])):
        rows += [{"bn_mode": mode, "start": start, "node": float(node), "weight": float(weight),
                  "n_params": n_params, "samples": hessian.samples}
                 for node, weight in zip(nodes, weights)]
    return rows
