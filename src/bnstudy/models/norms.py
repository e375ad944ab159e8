"""The normalisers and Algorithm 1's noise, placed after each conv/linear layer and before the
non-linearity. Which variant uses which is the table `bnstudy.config.variants.VARIANTS`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..config.spec import NormSpec
from ..config.variants import NORMALISER_RECORDS, VARIANTS, Normaliser, Variant, normaliser_settings


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Statistics are per unit: over the batch, and over spatial positions in conv layers."""
    return (0,) if x.ndim == 2 else (0, *range(2, x.ndim))


def _per_unit(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.ndim - 2)))


class LpNorm(nn.Module):
    """lp normalisation, Santurkar et al. 2018 section 3.3: subtract the batch mean per unit, as
    BatchNorm does, "but then divide by the average of their lp norm (before shifting the mean)".

    The scale is taken over the *uncentred* activations a of a unit: (mean_i |a_i|^p)^(1/p) (the
    power mean, so it does not grow with the batch), max_i |a_i| for p = inf. So l1, l2 and linf
    are three normalisers, and none is BatchNorm: l2's scale is sqrt(var + mean^2), not the
    standard deviation. `centred=True` takes the scale after centring instead (a reading under
    which l2 is BatchNorm without epsilon inside the root), kept as an explicitly named option
    (`norm.lp_scale: centred`). Affine gamma/beta and running statistics for evaluation follow
    BatchNorm.
    """

    def __init__(self, features: int, p: float, eps: float = 1e-5, momentum: float = 0.1,
                 centred: bool = False):
        super().__init__()
        self.p, self.eps, self.momentum, self.centred = p, eps, momentum, centred
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_scale", torch.ones(features))

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}, centred={self.centred}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = _reduce_dims(x)
        if self.training:
            mean = x.mean(dims)
            centred = x - _per_unit(mean, x)
            magnitude = (centred if self.centred else x).abs()
            if self.p == float("inf"):
                scale = magnitude.amax(dims)
            else:
                scale = magnitude.pow(self.p).mean(dims).pow(1 / self.p)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_scale.lerp_(scale.detach(), self.momentum)
        else:
            mean, scale = self.running_mean, self.running_scale
            centred = x - _per_unit(mean, x)
        y = centred / _per_unit(scale + self.eps, x)
        return y * _per_unit(self.weight, x) + _per_unit(self.bias, x)


class DistributionNoise(nn.Module):
    """Algorithm 1 of Santurkar et al.: time-varying, non-Gaussian noise on the activations.

    At every step, per unit j: mu_j ~ U(-n_mu, n_mu), sigma_j ~ U(1, n_sigma); per sample i (and
    spatial position): m_ij ~ U(mu_j - r_mu, mu_j + r_mu), s_ij ~ N(sigma_j, r_sigma); then
    a_ij <- s_ij * a_ij + m_ij. Applied to the normaliser's output (after BatchNorm's affine step;
    the paper does not say, and at initialisation both readings coincide). Active in training mode
    only; `enabled=False` (analyses) turns it off.

    `unit_scale` is for a network without a normaliser ("the same noise" on the standard network,
    section 2.1, has two readings): False applies the draws to the raw pre-activations as they are;
    True applies them in each unit's standardised coordinates, a <- mean_j + std_j * (s * z + m)
    with z = (a - mean_j) / std_j (batch statistics of this step, held constant for the gradient),
    i.e. noise of the size relative to the unit's spread that it has after BatchNorm.

    Randomness comes from `self.generator`, which the training loop reseeds every step (see
    `bnstudy.data.batches.step_generator`) so that resumed runs draw the same noise.
    """

    def __init__(self, n_mu: float, n_sigma: float, r_mu: float, r_sigma: float, enabled: bool = True,
                 unit_scale: bool = False, eps: float = 1e-5):
        super().__init__()
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma
        self.enabled, self.unit_scale, self.eps = enabled, unit_scale, eps
        self.generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return (f"n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
                f"r_sigma={self.r_sigma}, unit_scale={self.unit_scale}, enabled={self.enabled}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled):
            return x
        if self.unit_scale:
            dims = _reduce_dims(x)
            with torch.no_grad():
                mean = _per_unit(x.mean(dims), x)
                std = _per_unit((x.var(dims, unbiased=False) + self.eps).sqrt(), x)
            return mean + std * self.perturb((x - mean) / std)
        return self.perturb(x)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """a <- s * a + m with this step's draws."""
        gen_device = self.generator.device if self.generator is not None else x.device
        if x.device.type == "cpu" and gen_device.type == "cpu" and x.dtype in CPU_NOISE_DTYPES:
            mu, sigma = _unit_params(x.shape[1], self.n_mu, self.n_sigma, self.generator, gen_device)
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator).item())
            return CpuNoise.apply(x, mu, sigma, float(self.r_mu), float(self.r_sigma), seed)[0]
        scale, shift = sample_noise(x.shape, self.n_mu, self.n_sigma, self.r_mu, self.r_sigma,
                                    self.generator, x.dtype, x.device)
        return torch.addcmul(shift, scale, x)


def _unit_params(units: int, n_mu: float, n_sigma: float, generator: torch.Generator | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's per-step, per-unit mu_j ~ U(-n_mu, n_mu) and sigma_j ~ U(1, n_sigma)."""
    mu = (torch.rand(units, generator=generator, device=device) * 2 - 1) * n_mu
    sigma = 1 + torch.rand(units, generator=generator, device=device) * (n_sigma - 1)
    return mu, sigma


def sample_noise(shape: torch.Size, n_mu: float, n_sigma: float, r_mu: float, r_sigma: float,
                 generator: torch.Generator | None, dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's (s, m) for a batch of activations of `shape` (unit axis 1), drawn with
    torch's generator: s_ij ~ N(sigma_j, r_sigma), m_ij ~ U(mu_j - r_mu, mu_j + r_mu).

    The path for CUDA/MPS (and any non-float32 CPU input); float32 on the CPU goes through
    `CpuNoise`, which draws the same distributions about 4x faster (see there).
    """
    units = shape[1]
    view = (1, units) + (1,) * (len(shape) - 2)
    gen_device = generator.device if generator is not None else device
    mu, sigma = _unit_params(units, n_mu, n_sigma, generator, gen_device)
    # in-place draws and adds: four kernels, where a GPU step of a small net is launch-bound
    shift = torch.empty(shape, device=gen_device).uniform_(-r_mu, r_mu, generator=generator)
    shift += mu.view(view)
    scale = torch.empty(shape, device=gen_device).normal_(0.0, r_sigma, generator=generator)
    scale += sigma.view(view)
    return scale.to(device=device, dtype=dtype), shift.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _quantile_tables(r_mu: float, r_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """U(-r_mu, r_mu) and N(0, r_sigma) at the 65,536 midpoint quantiles (k + 1/2) / 2^16.

    A 16-bit random index into these tables is an exact draw from the uniform on that grid
    (step 3e-6 r_mu) and from the normal's 65,536 equal-mass quantiles (tails truncated at
    4.2 sigma, which holds 3e-5 of the mass): indistinguishable from the continuous noise at
    the scale of Algorithm 1, and the moments match to 1e-4 (tests/test_norms.py).
    """
    mid = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536
    uniform = ((2 * mid - 1) * r_mu).to(torch.float32).numpy()
    normal = (torch.special.ndtri(mid) * r_sigma).to(torch.float32).numpy()
    return uniform, normal


class CpuNoise(torch.autograd.Function):
    """y = s * x + m with Algorithm 1's s and m, in one pass, for CPU tensors.

    Why by hand: drawing ~10 million numbers a step with torch's single-threaded CPU generator and
    applying them in separate passes made a noisy-BatchNorm step about 1.9x a BatchNorm step on
    the 2-core CPU. Here one compiled loop (`bnstudy.models.noise_kernel`) draws, looks up, adds the
    per-unit terms and applies the noise per element. Only s is kept for the backward pass
    (dy/dx = s). The random bits are counter-based (element k of the activation's memory gets
    splitmix64 of key + k), so the numbers are a pure function of (seed, layout).
    """

    @staticmethod
    def forward(x, mu, sigma, r_mu, r_sigma, seed):  # returns (y, s); s is saved for backward
        return _cpu_apply_noise(x, mu, sigma, r_mu, r_sigma, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_y, _grad_s):
        (scale,) = ctx.saved_tensors
        return grad_y * scale, None, None, None, None, None


CPU_NOISE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _cpu_apply_noise(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, r_mu: float,
                     r_sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, s) in x's dtype and layout, from `bnstudy.models.noise_kernel.noise_f32`."""
    from . import noise_kernel  # numba: imported only by jobs that draw CPU noise

    if x.dtype != torch.float32:  # bf16 autocast: float32 arithmetic, rounded once
        y, scale = _cpu_apply_noise(x.float(), mu, sigma, r_mu, r_sigma, seed)
        return y.to(x.dtype), scale.to(x.dtype)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    y, scale = torch.empty_like(x), torch.empty_like(x)
    units = x.shape[1]
    mu_np, sigma_np = mu.to(torch.float32).numpy(), sigma.to(torch.float32).numpy()
    if x.ndim == 2 or x.is_contiguous(memory_format=torch.channels_last):
        # memory is (rows, units): linear layers, and conv maps in channels_last (N*H*W, C)
        views = [t.permute(0, *range(2, t.ndim), 1).reshape(-1, units) for t in (x, y, scale)]
        rows = views[0].shape[0]
        row_mu = row_sigma = np.zeros(rows, np.float32)
        col_mu, col_sigma = mu_np, sigma_np
    else:  # NCHW memory is (N*C, H*W): row r holds unit r % C
        views = [t.reshape(t.shape[0] * units, -1) for t in (x, y, scale)]
        rows = views[0].shape[0]
        row_mu, row_sigma = np.tile(mu_np, x.shape[0]), np.tile(sigma_np, x.shape[0])
        col_mu = col_sigma = np.zeros(views[0].shape[1], np.float32)
    uniform, normal = _quantile_tables(r_mu, r_sigma)
    # One thread: a second Python thread running half the rows competes with torch's spinning
    # OpenMP workers and measured no faster over a whole training step.
    noise_kernel.noise_f32(*(v.numpy() for v in views), row_mu, row_sigma, col_mu, col_sigma,
                           normal, uniform, np.uint64(seed % (1 << 64)), 0, rows)
    return y, scale


def groups_of(features: int, group_size: int) -> int:
    """GroupNorm's number of groups for `features` channels of `group_size` each (one group when
    the layer is narrower than a group)."""
    if features <= group_size:
        return 1
    if features % group_size:
        raise ValueError(f"{features} channels do not split into groups of {group_size}: choose a "
                         f"norm.group_size that divides every layer's width")
    return features // group_size


def _per_sample(groups: Callable[[int, NormSpec], int]):
    """LayerNorm, GroupNorm and InstanceNorm: `nn.GroupNorm` with `groups(features, norm)` groups."""
    return lambda features, spatial, v, norm: nn.GroupNorm(groups(features, norm), features, eps=norm.eps)


# Variant.norm -> (features, spatial, variant, norm spec) -> the module after the layer; the keys
# are those of `variants.NORMALISER_RECORDS` (a test checks it). WeightNorm reparametrises the layer itself
# (`models.weight_normed`): its slot here is empty, as is the standard network's.
NORMALISERS: dict[str | None, Callable[[int, bool, Variant, NormSpec], nn.Module]] = {
    None: lambda features, spatial, v, norm: nn.Identity(),
    "weight": lambda features, spatial, v, norm: nn.Identity(),
    "batch": lambda features, spatial, v, norm: (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(features, eps=norm.eps),
    "lp": lambda features, spatial, v, norm: LpNorm(features, v.p, eps=norm.eps, centred=norm.lp_scale == "centred"),
    "layer": _per_sample(lambda features, norm: 1),
    "group": _per_sample(lambda features, norm: groups_of(features, norm.setting("group_size"))),
    "instance": _per_sample(lambda features, norm: features),
}


def register(name: str, record: Normaliser, builder: Callable[[int, bool, Variant, NormSpec], nn.Module],
             variants: Mapping[str, Mapping]) -> None:
    """Add a normaliser from outside the package: its config-stage record, its module builder
    (`builder(features, spatial, variant, norm spec)`) and the variants that use it (name ->
    the other `Variant` fields, e.g. {"noisy_x": {"noise": "absolute"}}). Settings of its own
    (`record.settings`, as GroupNorm's group_size) join the schema's norm block and the run-id rule
    from the record; the builder reads them with `norm.setting(key)`."""
    if name in NORMALISER_RECORDS or name in NORMALISERS:
        raise ValueError(f"normaliser {name!r} is registered twice")
    clash = sorted(set(record.settings) & set(normaliser_settings()))
    if clash:
        raise ValueError(f"normaliser {name!r}: settings {clash} belong to another normaliser; name them apart")
    taken = [v for v in variants if v in VARIANTS]
    if taken:
        raise ValueError(f"variants {taken} exist already")
    NORMALISER_RECORDS[name], NORMALISERS[name] = record, builder
    VARIANTS.update({variant: Variant(name, **fields) for variant, fields in variants.items()})


def make_norm(variant: str, features: int, spatial: bool, norm: NormSpec,
              noise_enabled: bool = True) -> nn.Module:
    """The module that follows a conv (spatial=True) or linear layer for this variant.

    `norm` is a run spec's norm block: eps, lp_scale, group_size and Algorithm 1's noise
    constants. LayerNorm, GroupNorm and InstanceNorm are `nn.GroupNorm` with 1, C / group_size and
    C groups (per-channel affine parameters, no running statistics: they normalise each sample on
    its own, the same in training and evaluation). WeightNorm reparametrises the layer itself
    (`models.weight_normed`); its norm slot is empty.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown normalisation variant {variant!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    if v.conv_only and not spatial:
        raise ValueError(f"{variant} normalises each channel over its spatial positions: a linear "
                         f"layer has none (use it on convolutions only)")
    module = NORMALISERS[v.norm](features, spatial, v, norm)
    if not v.noise:
        return module
    noise = DistributionNoise(**dataclasses.asdict(norm.noise), enabled=noise_enabled,
                              unit_scale=v.noise == "unit", eps=norm.eps)
    return nn.Sequential(module, noise)
