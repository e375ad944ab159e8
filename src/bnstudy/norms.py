"""Normalisation variants, placed after each conv/linear layer and before the non-linearity.

A variant is a row of `VARIANTS`: which normaliser, and whether Algorithm 1's noise follows it.
Adding a variant is one line there (plus a normaliser class if it needs a new one).

    standard         no normalisation
    batchnorm        BatchNorm (Ioffe & Szegedy 2015)
    noisy_batchnorm  BatchNorm, then Algorithm 1's distributional noise (Santurkar et al. 2018)
    standard_noise   the same noise on the un-normalised network
    l1, l2, linf     lp normalisation (Santurkar et al. section 3.3)
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Variant:
    norm: str | None  # "batch", "lp" or None
    p: float | None = None  # for lp normalisation
    noise: bool = False


VARIANTS: dict[str, Variant] = {
    "standard": Variant(None),
    "batchnorm": Variant("batch"),
    "noisy_batchnorm": Variant("batch", noise=True),
    "standard_noise": Variant(None, noise=True),
    "l1": Variant("lp", p=1.0),
    "l2": Variant("lp", p=2.0),
    "linf": Variant("lp", p=float("inf")),
}


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Statistics are per unit: over the batch, and over spatial positions in conv layers."""
    return (0,) if x.ndim == 2 else (0, *range(2, x.ndim))


def _per_unit(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.ndim - 2)))


class LpNorm(nn.Module):
    """Subtract the batch mean per unit, divide by the batch's average l_p norm per unit.

    PAPER.md (section 3.3) says "divide by the batch average l_p norm". We read "average" as the
    power mean (mean_i |a_i - mu|^p)^(1/p), so the scale does not grow with the batch size; for
    p = inf it is max_i |a_i - mu|, and for p = 2 it equals the (biased) standard deviation, i.e.
    BatchNorm without its epsilon inside the root. Affine gamma/beta and running statistics for
    evaluation follow BatchNorm.
    """

    def __init__(self, features: int, p: float, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.p, self.eps, self.momentum = p, eps, momentum
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_scale", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = _reduce_dims(x)
        if self.training:
            mean = x.mean(dims)
            centred = x - _per_unit(mean, x)
            if self.p == float("inf"):
                scale = centred.abs().amax(dims)
            else:
                scale = centred.abs().pow(self.p).mean(dims).pow(1 / self.p)
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
    PAPER.md does not say, and at initialisation both readings coincide). Active in training mode
    only; `enabled=False` (analyses) turns it off.

    Randomness comes from `self.generator`, which the training loop reseeds every step (see
    `bnstudy.data.step_generator`) so that resumed runs draw the same noise.
    """

    def __init__(self, n_mu: float, n_sigma: float, r_mu: float, r_sigma: float, enabled: bool = True):
        super().__init__()
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma
        self.enabled = enabled
        self.generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return (f"n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
                f"r_sigma={self.r_sigma}, enabled={self.enabled}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled):
            return x
        scale, shift = sample_noise(x.shape, self.n_mu, self.n_sigma, self.r_mu, self.r_sigma,
                                    self.generator, x.dtype, x.device)
        return torch.addcmul(shift, scale, x)


def sample_noise(shape: torch.Size, n_mu: float, n_sigma: float, r_mu: float, r_sigma: float,
                 generator: torch.Generator | None, dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw Algorithm 1's (s, m) for a batch of activations of `shape` (unit axis 1).

    The per-unit parameters come from `generator`. The per-element draws are the cost: on CUDA
    they come from torch's generator on the device; on the CPU, where torch's single-threaded
    Mersenne Twister makes them the bottleneck (about 8 ns an element for a uniform and a normal),
    they come from `_cpu_element_noise` at about a third of that.
    """
    units = shape[1]
    view = (1, units) + (1,) * (len(shape) - 2)
    gen_device = generator.device if generator is not None else device
    mu = (torch.rand(units, generator=generator, device=gen_device) * 2 - 1) * n_mu
    sigma = 1 + torch.rand(units, generator=generator, device=gen_device) * (n_sigma - 1)
    if gen_device.type == "cpu" and device.type == "cpu":
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())
        scale, shift = _cpu_element_noise(shape, mu.view(view), sigma.view(view), r_mu, r_sigma, seed)
    else:
        shift = (2 * torch.rand(shape, generator=generator, device=gen_device) - 1) * r_mu + mu.view(view)
        scale = torch.randn(shape, generator=generator, device=gen_device) * r_sigma + sigma.view(view)
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


def _cpu_element_noise(shape: torch.Size, mu: torch.Tensor, sigma: torch.Tensor, r_mu: float,
                       r_sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, m) = (sigma_j + N(0, r_sigma), mu_j + U(-r_mu, r_mu)) per element, on the CPU.

    Each comes from its own numpy SFC64 stream (64 random bits per call, split into four 16-bit
    indices into its quantile table), plus its per-unit term, and the two are computed on two
    threads: numpy releases the GIL for the bit generation, the lookup and the addition.
    """
    n = math.prod(shape)
    uniform, normal = _quantile_tables(float(r_mu), float(r_sigma))

    def draw(table: np.ndarray, per_unit: torch.Tensor, stream: int) -> torch.Tensor:
        bits = np.random.SFC64(np.random.SeedSequence([seed, stream])).random_raw((n + 3) // 4)
        values = table.take(bits.view(np.uint16)[:n]).reshape(shape)
        np.add(values, per_unit.numpy(), out=values)
        return torch.from_numpy(values)

    shift = _pool().submit(draw, uniform, mu, 0)
    scale = draw(normal, sigma, 1)
    return scale, shift.result()


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnstudy-noise")


def make_norm(variant: str, features: int, spatial: bool, eps: float, noise: dict,
              noise_enabled: bool = True) -> nn.Module:
    """The module that follows a conv (spatial=True) or linear layer for this variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown normalisation variant {variant!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    if v.norm == "batch":
        norm = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(features, eps=eps)
    elif v.norm == "lp":
        norm = LpNorm(features, v.p, eps=eps)
    else:
        norm = nn.Identity()
    if not v.noise:
        return norm
    return nn.Sequential(norm, DistributionNoise(**noise, enabled=noise_enabled))
