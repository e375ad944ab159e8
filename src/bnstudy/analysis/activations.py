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
- activation_var: the variance of the block's output over the batch and its features;
- weight_grad_cos, unexplained_cos: Arora, Li & Lyu 2019's scale invariance, checked at the
  checkpoint on the first analysis batch. A layer followed by BatchNorm on batch statistics has
  w_i . g_i = eps / (v_i + eps) gamma_i dL/dgamma_i per filter (0 without BN's eps); the columns are
  the largest |cos(w_i, g_i)| over the layer's filters and the largest part of it that identity
  does not explain, |w_i . g_i - eps / (v_i + eps) gamma_i dL/dgamma_i| / (||w_i|| ||g_i||). In
  float64 (`dtype: float64`) the second is rounding (~1e-14); in float32 the BN backward's
  cancellation leaves up to ~1e-4 in the first layer, which is why training's per-step logs
  (`layers.csv`, float32) cannot test the identity. NaN for a layer without BatchNorm, or with
  running statistics (`bn_mode: running`: the layer is then not scale-invariant at all).
"""

from __future__ import annotations

import math

import torch
from torch.nn.modules.batchnorm import _BatchNorm

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
    """Rows {bn_mode, layer, cosine_similarity, stable_rank, grad_norm, activation_var, weight_grad_cos,
    unexplained_cos}, one per normalised layer, the activation measures averaged over the analysis
    batches (the eps identity's two on the first batch: `eps_identity`)."""
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
    identity = eps_identity(origin, blocks)
    rows = []
    for i, main in enumerate(mains):
        measures = [layer_measures(out) for out in captured[i]]
        row = {k: sum(m[k] for m in measures) / len(measures) for k in measures[0]}
        cosine, unexplained = identity.get(i, (math.nan, math.nan))
        rows.append({"bn_mode": settings["bn_mode"], "layer": i + 1, **row,
                     "grad_norm": float(grads[main].double().norm()),
                     "weight_grad_cos": cosine, "unexplained_cos": unexplained})
    return rows


def eps_identity(origin: Origin, blocks: list) -> dict[int, tuple[float, float]]:
    """Per block index: (the largest |cos(w_i, g_i)| over its filters, the largest part of it that
    BN's eps does not explain: NaN unless its normaliser is a BatchNorm on batch statistics), from
    one forward and backward of the first analysis batch in the analysis dtype."""
    model = origin.objective.model
    names = {id(p): n for n, p in model.named_parameters()}
    norms = {i: m for i, block in enumerate(blocks) for m in block.modules()
             if isinstance(m, _BatchNorm) and m.training and m.affine}
    variances: dict[int, torch.Tensor] = {}

    def keep_variance(i):
        def hook(module, args):
            x = args[0].detach()
            variances[i] = x.var((0,) if x.ndim == 2 else (0, *range(2, x.ndim)), unbiased=False)
        return hook

    mains = [group[0] for group in origin.layer_groups]
    gammas = {i: names[id(norm.weight)] for i, norm in norms.items()}
    wanted = [*mains, *gammas.values()]
    point = dict(origin.params)
    leaves = {k: origin.params[k].detach().requires_grad_(True) for k in wanted}
    point.update(leaves)
    handles = [norm.register_forward_pre_hook(keep_variance(i)) for i, norm in norms.items()]
    try:
        loss = origin.objective.batch_loss(point, 0)
    finally:
        for handle in handles:
            handle.remove()
    grads = dict(zip(wanted, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)))
    out = {}
    for i, main in enumerate(mains):
        if grads[main] is None:
            continue
        w, g = origin.params[main].detach().flatten(1), grads[main].flatten(1)
        scale = (w.norm(dim=1) * g.norm(dim=1)).clamp_min(torch.finfo(w.dtype).tiny)
        dots = (w * g).sum(1)
        unexplained = math.nan
        if i in norms and grads[gammas[i]] is not None:
            share = norms[i].eps / (variances[i] + norms[i].eps)
            predicted = share * origin.params[gammas[i]].detach() * grads[gammas[i]]
            unexplained = float(((dots - predicted).abs() / scale).max())
        out[i] = (float((dots.abs() / scale).max()), unexplained)
    return out
