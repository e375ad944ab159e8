"""The loss landscape along the gradient, Santurkar et al. 2018 section 3.2 (Fig. 4; DLN Fig. 10).

At a checkpoint W with gradient g, for step sizes eta on a grid, the paper measures
  (a) loss variation:          L(W - eta g), its min..max over eta,
  (b) gradient predictiveness: ||g - grad L(W - eta g)||_2,
  (c) effective beta-smoothness: max over eta of ||g - grad L(W - eta g)||_2 / ||eta g||_2.
This module writes one row per eta (loss, grad_diff = (b), beta = the ratio in (c)); the ranges and
the max over eta are taken downstream (aggregation, figures).

Choices:
- g is the full gradient over all parameters of L (`functional.Objective`: the mean over the
  analysis batches), and W - eta g moves all parameters.
- eta grid: linspace(eta_min, eta_max, points), times the run's lr when `relative` (section 3.2: VGG
  [1/2, 4] x lr; appendix, DLN: [1/100, 30] x lr). eta_rel = eta / lr in both cases.
- Optional random directions d_k ("random1", "random2", ...): Gaussian, rescaled to ||d_k|| = ||g||
  so that eta means the same distance as along g; drawn in float64 from a generator seeded with
  `seed` on the CPU (the same directions on CPU and CUDA, in any dtype, at every checkpoint). For them grad_diff and beta use
  W - eta d_k in place of W - eta g. They are a control: along g the loss must fall at small eta.
- At eta = 0, beta is 0/0 and written as NaN.
"""

from __future__ import annotations

import torch

from .functional import Origin, Params, axpy, diff_norm, norm


def eta_grid(settings: dict, lr: float) -> list[tuple[float, float]]:
    """[(eta, eta_rel)] from settings eta_min, eta_max, points, relative."""
    grid = torch.linspace(settings["eta_min"], settings["eta_max"], settings["points"],
                          dtype=torch.float64).tolist()
    if settings["relative"]:
        return [(v * lr, v) for v in grid]
    return [(v, v / lr if lr else float("nan")) for v in grid]


def random_directions(params: Params, scale: float, count: int, seed: int) -> list[Params]:
    """`count` Gaussian directions with ||d|| = scale, reproducible from `seed` on any device."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        # drawn in float64 on the CPU, then cast: the same direction for any dtype and device
        d = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
             for k, p in params.items()}
        n = norm(d)
        out.append({k: v * (scale / n) for k, v in d.items()})
    return out


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {direction, eta, eta_rel, loss, grad_diff, beta} for each direction and eta.

    settings: eta_min, eta_max, points, relative, random_directions (a count), seed; the step sizes
    are relative to the learning rate of the run's optimizer at the checkpoint.
    Cost: one forward-backward for g, then one per (direction, eta). Points are evaluated one
    after the other: batching them with torch.func.vmap measured 1.5-3x slower on the CPU
    (compute-bound; vmap's batch-norm decomposition adds elementwise passes).
    """
    objective, params = origin.objective, origin.params
    _, g = objective.value_and_grad(params)
    g_norm = norm(g)
    directions = [("gradient", g)]
    extra = random_directions(params, g_norm, settings["random_directions"], settings["seed"])
    directions += [(f"random{k}", d) for k, d in enumerate(extra, start=1)]
    grid = eta_grid(settings, origin.lr)
    rows = []
    for name, d in directions:
        for eta, eta_rel in grid:
            # each point is set fresh from the origin (no drift), one at a time (one weight copy)
            loss, g_eta = objective.value_and_grad(axpy(params, -eta, d))
            grad_diff = diff_norm(g, g_eta)
            step = abs(eta) * g_norm  # ||eta d|| = |eta| ||g|| for every direction
            rows.append({"direction": name, "eta": eta, "eta_rel": eta_rel, "loss": loss,
                         "grad_diff": grad_diff, "beta": grad_diff / step if step > 0 else float("nan")})
    return rows
