"""The loss on a 2-D plane around a checkpoint (Li, Xu, Taylor, Studer & Goldstein 2018,
"Visualizing the Loss Landscape of Neural Nets"; loss-landscape's `net_plotter.py`).

Two random directions d1, d2, each filter-normalised: drawn from a seeded Gaussian, then each
filter (a conv kernel's output channel, a linear layer's row) rescaled to the norm of the matching
filter of the weights, so that a step of 1 along a direction changes every filter by its own size
and networks with differently scaled weights (BatchNorm makes them scale-invariant) compare
fairly. Directions of biases and normaliser parameters (1-D tensors) are zero (the reference's
`ignore='biasbn'`). The loss and accuracy are evaluated at W + x d1 + y d2 on a `points` x
`points` grid over [-span, span]^2 (the reference: 51 x 51 on [-1, 1]^2), each point set fresh
from the stored weights, with normalisers on the batch's or the running statistics (`bn_mode`,
recorded in the table: the reference evaluates in eval mode).
"""

from __future__ import annotations

import torch

from .functional import Origin, Params


def filter_normalised(params: Params, seed: int) -> Params:
    """A random direction with every filter's norm equal to the matching weight filter's norm
    (drawn in float64 on the CPU from `seed`, then cast: the same direction on every device)."""
    gen = torch.Generator().manual_seed(seed)
    direction = {}
    for name, p in params.items():
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        w = p.detach().to(torch.float64).cpu()
        dims = tuple(range(1, p.dim()))
        scale = torch.linalg.vector_norm(w, dim=dims, keepdim=True) / \
            torch.linalg.vector_norm(d, dim=dims, keepdim=True).clamp_min(1e-30)
        direction[name] = (d * scale).to(p.device, p.dtype)
    return direction


def grid(points: int, span: float) -> list[float]:
    """`points` evenly spaced coordinates in [-span, span]; odd `points` put exactly 0 on the grid
    (the centre is the checkpoint itself: linspace's 13 points put it at 5.6e-17)."""
    if points == 1:
        return [0.0]
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


@torch.no_grad()
def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {bn_mode, x, y, loss, accuracy} for every grid point (accuracy NaN for regression)."""
    params = origin.params
    d1 = filter_normalised(params, settings["seed"])
    d2 = filter_normalised(params, settings["seed"] + 1)
    coordinates = grid(settings["points"], settings["span"])
    rows = []
    for x in coordinates:
        for y in coordinates:
            point = {k: torch.add(torch.add(p, d1[k], alpha=x), d2[k], alpha=y) if x or y else p
                     for k, p in params.items()}
            loss, accuracy = origin.objective.evaluate(point)
            rows.append({"bn_mode": settings["bn_mode"], "x": x, "y": y, "loss": loss, "accuracy": accuracy})
    return rows
