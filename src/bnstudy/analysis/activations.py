"""Per-layer measures of the activations and gradients at a checkpoint (Lubana, Dick & Tanaka 2021,
"Beyond BatchNorm"): how normalisers differ in what they do to a network's signal, at
initialisation and during training.

For each normalised layer (a block: layer -> normaliser -> non-linearity), on the analysis batch
and with the normalisers on the batch's or the running statistics (`bn_mode`):
- cosine_similarity: the mean cosine similarity between different samples' activation vectors at
  the block's output (what the next layer sees). Near 1 means every sample looks alike to the
  next layer (Lubana et al.: without normalisation deep networks' samples collapse together);
- stable_rank: ||A||_F^2 / ||A||_2^2 of the samples x features activation matrix A, a smooth count
  of the directions the batch spans (GroupNorm keeps it of order sqrt(width / group size));
- grad_norm: ||dL/dW_i|| of the layer's main weight (small groups inflate early layers' gradients);
- activation_var: the variance of the block's output over the batch and its features.
"""

from __future__ import annotations

import math

import torch

from .functional import Origin


def layer_measures(activations: torch.Tensor) -> dict:
    """{cosine_similarity, stable_rank, activation_var} of one layer's output (samples first)."""
    a = activations.detach().flatten(1).double()
    n = a.shape[0]
    unit = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    gram = unit @ unit.T
    off_diagonal = (gram.sum() - gram.diagonal().sum()) / max(n * (n - 1), 1)
    spectral = torch.linalg.matrix_norm(a, ord=2)
    stable_rank = float(a.pow(2).sum() / spectral ** 2) if spectral > 0 else math.nan
    return {"cosine_similarity": float(off_diagonal), "stable_rank": stable_rank,
            "activation_var": float(a.var(unbiased=False))}


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {bn_mode, layer, cosine_similarity, stable_rank, grad_norm, activation_var}, one per
    normalised layer, the activation measures averaged over the analysis batches."""
    model = origin.objective.model
    blocks = list(model.blocks)
    captured: dict[int, list] = {i: [] for i in range(len(blocks))}
    handles = [block.register_forward_hook(lambda module, args, out, i=i: captured[i].append(out))
               for i, block in enumerate(blocks)]
    try:
        with torch.no_grad():
            for b in range(len(origin.objective.batches)):
                origin.objective.batch_outputs(origin.params, b)
    finally:
        for handle in handles:
            handle.remove()
    mains = [group[0] for group in origin.layer_groups]
    _, grads = origin.objective.value_and_grad(origin.params, wrt=mains)
    rows = []
    for i, main in enumerate(mains):
        measures = [layer_measures(out) for out in captured[i]]
        row = {k: sum(m[k] for m in measures) / len(measures) for k in measures[0]}
        rows.append({"bn_mode": settings["bn_mode"], "layer": i + 1, **row,
                     "grad_norm": float(grads[main].double().norm())})
    return rows
