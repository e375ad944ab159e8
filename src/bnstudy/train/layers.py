"""Per-layer logging of a training run: on recording steps, activation statistics per unit (taken
with temporary hooks; Algorithm 1's noise is drawn per unit and averages away over a layer's units)
and per-layer weight and gradient measures (`LayerRecorder`, the layers and units tables).
"""

from __future__ import annotations

import contextlib
import math

import torch



PERCENTILES = (5, 15, 50, 85, 95)


MAX_STAT_SAMPLES = 1 << 14  # values per unit (deterministic stride) for its percentiles


# ----------------------------------------------------------------------------------------------
# activation statistics


def unit_percentiles(units: torch.Tensor) -> torch.Tensor:
    """PERCENTILES of each row of `units` (units x values): (units, len(PERCENTILES)).

    Rows longer than MAX_STAT_SAMPLES are subsampled with a fixed stride (deterministic): a
    percentile from 16k values is within ~0.3 percentile points of the full batch's."""
    if units.shape[1] > MAX_STAT_SAMPLES:
        units = units[:, :: units.shape[1] // MAX_STAT_SAMPLES + 1]
    q = torch.tensor([p / 100 for p in PERCENTILES], device=units.device)
    return torch.quantile(units, q, dim=1).T


def filter_cosines(weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor | None:
    """|cos(w_i, g_i)| of each of the layer's filters: 0 for a filter that is scale-invariant (a
    layer followed by BatchNorm without eps: w_i . g_i = 0, Arora, Li & Lyu 2019)."""
    if grad is None:
        return None
    w, g = weight.detach().flatten(1).float(), grad.detach().flatten(1).float()
    return ((w * g).sum(1) / (w.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-30)).abs()


def cosine_spread(weight: torch.Tensor, grad: torch.Tensor | None) -> tuple:
    """(largest, median) over the layer's filters of |cos(w_i, g_i)|: the extreme filter and the
    typical one, from one pass over the filters."""
    cosines = filter_cosines(weight, grad)
    return (math.nan, math.nan) if cosines is None else (cosines.max(), cosines.median())


def unexplained_cosine(weight: torch.Tensor, grad: torch.Tensor | None, stats: dict) -> torch.Tensor | float:
    """max over a BatchNorm layer's filters of |w_i . g_i - eps/(v_i + eps) gamma_i dL/dgamma_i| /
    (||w_i|| ||g_i||): what of cos(w_i, g_i) BN's eps does not explain. With eps the layer is not
    exactly scale-invariant: d/da L(a w) at a = 1 is w . g = eps/(v + eps) gamma dL/dgamma per
    channel (v: the batch variance of the channel's input), so |cos(w, g)| is set by eps, and the
    identity, not cos = 0, is what Arora, Li & Lyu's analysis predicts of a real BN layer."""
    share, norm = stats.get("eps_share"), stats.get("bn")
    if grad is None or share is None or norm.weight.grad is None:
        return math.nan
    w, g = weight.detach().flatten(1).float(), grad.detach().flatten(1).float()
    predicted = share * norm.weight.detach().float() * norm.weight.grad.detach().float()
    return (((w * g).sum(1) - predicted).abs() / (w.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-30)).max()


def recorded_units(width: int, count: int) -> list[int]:
    """`count` fixed, evenly spaced unit indices of a layer of `width` units (0 always among them)."""
    if count >= width:
        return list(range(width))
    return sorted({round(i * (width - 1) / max(count - 1, 1)) for i in range(count)})


class LayerRecorder:
    """Per-step activation statistics of every block's non-linearity input (after norm and noise).

    On a recording step t: the percentiles, mean and variance of `units` fixed units (each over
    the batch and spatial positions: Figs. 1c, 2, 9 plot such single units), the gradient norms,
    mean |gamma_j| / sigma_j (Santurkar et al. Thm 4.1), and every unit's mean and variance. On
    step t + 1 every unit's mean and variance again, so that the layer's row of step t gets
    mean_j |mu_j(t+1) - mu_j(t)| and mean_j |var_j(t+1) - var_j(t)| (Fig. 8: the change of the
    moments between two successive steps, per unit, averaged over units).
    """

    def __init__(self, model, units: int):
        self.model, self.units = model, units
        self.moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> per-unit (mean, var)
        self.moments_step: int | None = None  # the step `moments` were taken at
        self._handles: list = []
        self._stats: dict[int, dict] = {}
        self._new_moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- checkpointed state ------------------------------------------------------------------------

    def state(self) -> dict:
        return {"step": self.moments_step,
                "moments": {k: (m.cpu(), v.cpu()) for k, (m, v) in self.moments.items()}}

    def load(self, state: dict | None, device: torch.device) -> None:
        state = state or {"step": None, "moments": {}}
        self.moments_step = state["step"]
        self.moments = {k: (m.to(device), v.to(device)) for k, (m, v) in state["moments"].items()}

    # -- hooks for one step ------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, full: bool, moments: bool):
        """Hooks for one forward/backward: `full` statistics and/or only the per-unit moments."""
        if not (full or moments):
            yield
            return
        for i, block in enumerate(self.model.blocks, start=1):
            self._handles.append(block.act.register_forward_pre_hook(self._activation_hook(i, full)))
            if full:
                self._handles.append(block.norm.register_forward_pre_hook(self._norm_hook(i)))
        try:
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def _activation_hook(self, layer: int, full: bool):
        def hook(module, args):
            z = args[0]
            d = z.detach().float()
            dims = (0,) if d.ndim == 2 else (0, *range(2, d.ndim))
            mean, var = d.mean(dims), d.var(dims, unbiased=False)
            self._new_moments[layer] = (mean, var)
            if not full:
                return
            stats = self._stats.setdefault(layer, {})
            units = recorded_units(d.shape[1], self.units)
            # one (units x values) matrix, one quantile call; read back once in `collect`
            values = d[:, units].transpose(0, 1).reshape(len(units), -1)
            stats["units"] = (units, torch.cat([mean[units, None], var[units, None],
                                                unit_percentiles(values)], dim=1))
            if z.requires_grad:
                z.register_hook(lambda g: stats.__setitem__("output_grad_norm", g.norm()))
        return hook

    def _norm_hook(self, layer: int):
        def hook(module, args):
            norm = module[0] if isinstance(module, torch.nn.Sequential) else module
            stats = self._stats.setdefault(layer, {})
            weight = getattr(norm, "weight", None)
            if weight is None or not isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                stats["gamma_over_sigma"] = math.nan
                return
            x = args[0].detach().float()
            dims = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
            var = x.var(dims, unbiased=False)
            sigma = (var + norm.eps).sqrt()
            if norm.training:  # batch statistics: the eps identity of `unexplained_cosine` holds
                stats["eps_share"], stats["bn"] = norm.eps / (var + norm.eps), norm
            stats["gamma_over_sigma"] = (weight.detach().abs() / sigma).mean()
        return hook

    # -- rows ----------------------------------------------------------------------------------------

    def collect(self, step: int, full: bool, layer_rows: list[dict], unit_rows: list[dict]) -> None:
        """After a watched step's backward: fill the moment changes of the previous recorded step's
        rows (if it was step - 1), and append this step's rows when `full`."""
        new, self._new_moments = self._new_moments, {}
        if self.moments_step == step - 1 and new:
            open_rows = {row["layer"]: row for row in layer_rows if row["step"] == step - 1}
            for layer, (mean, var) in new.items():
                if layer in self.moments and layer in open_rows:
                    old_mean, old_var = self.moments[layer]
                    open_rows[layer]["unit_mean_change"] = (mean - old_mean).abs().mean().item()
                    open_rows[layer]["unit_var_change"] = (var - old_var).abs().mean().item()
        if not full:
            self.moments, self.moments_step = {}, None
            return
        self.moments, self.moments_step = new, step
        scalar = lambda v: torch.as_tensor(v, dtype=torch.float32).cpu()  # noqa: E731
        scalars, unit_stats = [], []
        for i, block in enumerate(self.model.blocks, start=1):
            stats = self._stats.get(i, {})
            weight, grad = block.layer.weight, block.layer.weight.grad
            scalars.append(torch.stack([scalar(grad.norm() if grad is not None else math.nan),
                                        scalar(stats.get("output_grad_norm", math.nan)),
                                        scalar(stats.get("gamma_over_sigma", math.nan)),
                                        scalar(weight.detach().float().norm()),
                                        *map(scalar, cosine_spread(weight, grad)),
                                        scalar(unexplained_cosine(weight, grad, stats))]))
            unit_stats.append(stats.get("units", ([], torch.empty(0, 2 + len(PERCENTILES)))))
        values = torch.stack(scalars).tolist()  # one read-back for every layer's scalars
        for i, ((grad_norm, output_norm, gamma, weight_norm, cosine, median_cosine, unexplained), (units, table)) in \
                enumerate(zip(values, unit_stats), start=1):
            layer_rows.append({"step": step, "layer": i, "weight_grad_norm": grad_norm,
                               "output_grad_norm": output_norm, "gamma_over_sigma": gamma,
                               "unit_mean_change": math.nan, "unit_var_change": math.nan,
                               "weight_norm": weight_norm, "weight_grad_cos": cosine,
                               "weight_grad_cos_p50": median_cosine, "unexplained_cos": unexplained})
            names = ["mean", "var", *(f"p{p:02d}" for p in PERCENTILES)]
            for unit, row in zip(units, table.tolist()):
                unit_rows.append({"step": step, "layer": i, "unit": unit, **dict(zip(names, row))})
        self._stats.clear()
