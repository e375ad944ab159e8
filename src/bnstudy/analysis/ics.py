"""Internal covariate shift, Santurkar et al. 2018, Definition 2.1 (Fig. 3).

For layer i at step t: G = dL/dW_i at (W_1..W_k) on batch (x, y); G' = the same gradient on the same
batch after every earlier layer W_1..W_{i-1} has taken its step-t update. ICS is reported as
||G - G'||_2 and cos(G, G') (ideal: 0 and 1).

Choices (the definition leaves them open):
- "layer j" is layer group j of `model.layer_groups()`: its main weight, bias and the affine
  parameters of its normaliser all take their update; parameters outside every group (the output
  layer) never move, being after every normalised layer.
- "the step-t update" is the one the run's optimizer would make from this checkpoint on this batch:
  `functional.sgd_step` with the checkpoint's lr, momentum, weight decay and momentum buffers.
- The loss and gradients are those of `functional.Objective` (the mean over the analysis batches).
"""

from __future__ import annotations

from .functional import Origin, diff_norm, dot, norm


def compute(origin: Origin, settings: dict) -> list[dict]:
    """Rows {layer, l2_diff, cosine, grad_norm} for every normalised layer (1-based `layer`).

    Cost: one forward-backward for G of all layers and for the update of all earlier layers (both
    from the same gradient), then one forward plus a backward down to layer i for each G' (layer
    1's G' is G itself: it has no earlier layer, so its ICS is exactly 0 and is not recomputed).
    """
    objective, params = origin.objective, origin.params
    _, grads = objective.value_and_grad(params)
    stepped = origin.step(grads)
    rows = []
    moved: dict = {}  # earlier layers' updated parameters, grown one layer at a time
    for i, group in enumerate(origin.layer_groups, start=1):
        main = group[0]
        g = grads[main]
        if i == 1:
            g2 = g
        else:
            point = dict(params)
            point.update(moved)
            _, g2 = objective.value_and_grad(point, wrt=[main])
            g2 = g2[main]
        gn, g2n = norm({main: g}), norm({main: g2})
        cosine = dot({main: g}, {main: g2}) / (gn * g2n) if gn > 0 and g2n > 0 else float("nan")
        rows.append({"layer": i, "l2_diff": diff_norm({main: g}, {main: g2}),
                     "cosine": cosine, "grad_norm": gn})
        moved.update({name: stepped[name] for name in group})
    return rows
