"""The Hessian's spectral density at a checkpoint by stochastic Lanczos quadrature (Ghorbani,
Krishnan & Xiao 2019; PyHessian): `starts` seeded start vectors, `lanczos_steps` Lanczos steps
each in float64 with full reorthogonalisation (`hessian.slq`). The reference used 80 steps x 10
starts.

The table holds the quadrature itself, one row per (start, node): the node (a Ritz value) and its
weight (the weights of a start sum to 1). The density is the average over starts of the weighted
nodes smoothed with a Gaussian (`bnstudy.figure_data.density_curve`), so its width is a drawing
choice, not a property of the table; n_params is recorded for the trace n * sum(weight * node).
"""

from __future__ import annotations

from .functional import Origin
from .hessian import Hessian, slq


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {start, node, weight, n_params}."""
    hessian = Hessian(origin.objective, origin.params)
    n_params = sum(p.numel() for p in origin.params.values())
    rows = []
    for start, (nodes, weights) in enumerate(slq(hessian, settings["lanczos_steps"], settings["starts"],
                                                 settings["seed"])):
        rows += [{"bn_mode": settings["bn_mode"], "start": start, "node": float(node), "weight": float(weight),
                  "n_params": n_params}
                 for node, weight in zip(nodes, weights)]
    return rows
