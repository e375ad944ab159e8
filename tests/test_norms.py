"""Each normalisation variant normalises as specified; noisy BN's noise follows Algorithm 1."""

import math

import pytest
import torch

from dataclasses import replace

from bnstudy.models.norms import DistributionNoise, LpNorm, make_norm, sample_noise
from bnstudy.config.spec import NoiseSpec, NormSpec

NOISE = {"n_mu": 0.5, "n_sigma": 1.25, "r_mu": 0.1, "r_sigma": 0.1}
NORM = NormSpec(variant="batchnorm", eps=1e-5, lp_scale="uncentred", noise=NoiseSpec(**NOISE))


def conv_input(seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3 + 5 * torch.randn(64, 4, 6, 6, generator=g)


def test_batchnorm_has_zero_mean_unit_variance_per_channel_in_train_mode():
    norm = make_norm("batchnorm", 4, True, NORM).train()
    y = norm(conv_input())
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.var((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_lp_norm_centres_and_divides_by_the_average_lp_norm_of_the_uncentred_input(p):
    """Section 3.3: centre as BatchNorm does, then divide by the average lp norm of the
    activations *before* the mean is shifted."""
    x = conv_input()
    y = LpNorm(4, p).train()(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    a = x.transpose(0, 1).reshape(4, -1).abs()
    scale = a.amax(1) if p == math.inf else a.pow(p).mean(1).pow(1 / p)
    centred = x - x.mean((0, 2, 3), keepdim=True)
    assert torch.allclose(y, centred / (scale.view(1, 4, 1, 1) + 1e-5), atol=1e-5)


def test_l2_differs_from_batchnorm_on_an_input_with_a_mean():
    """With the uncentred scale, l2 is not BatchNorm: sqrt(var + mean^2) > std when mean != 0.
    The centred reading (an explicit option) is BatchNorm up to epsilon."""
    x = conv_input()  # mean 3, std 5 per channel
    bn = make_norm("batchnorm", 4, True, NORM).train()(x)
    l2 = make_norm("l2", 4, True, NORM).train()(x)
    assert not torch.allclose(l2, bn, atol=1e-2)
    expected = (25 / (25 + 9)) ** 0.5  # std / sqrt(var + mean^2)
    assert l2.std().item() == pytest.approx(expected, rel=0.05)
    centred = make_norm("l2", 4, True, replace(NORM, lp_scale="centred")).train()(x)
    assert torch.allclose(centred, bn, atol=1e-3)
    l1 = make_norm("l1", 4, True, NORM).train()(x)
    linf = make_norm("linf", 4, True, NORM).train()(x)
    assert not torch.allclose(l1, l2, atol=1e-2) and not torch.allclose(linf, l2, atol=1e-2)


def test_lp_norm_uses_running_statistics_in_eval_mode():
    norm = LpNorm(4, 1.0)
    x = conv_input()
    for _ in range(200):
        norm.train()(x)
    assert torch.allclose(norm.eval()(x), norm.train()(x), atol=1e-3)


def test_standard_is_identity_and_an_unknown_variant_names_the_known_ones():
    assert torch.equal(make_norm("standard", 4, True, NORM)(conv_input()), conv_input())
    with pytest.raises(ValueError, match="unknown normalisation variant 'no_such_norm'; known: standard"):
        make_norm("no_such_norm", 4, True, NORM)


def test_noise_follows_algorithm_1():
    """Per unit: mu_j ~ U(-0.5, 0.5), sigma_j ~ U(1, 1.25); per element m ~ U(mu_j +- 0.1),
    s ~ N(sigma_j, 0.1). Checked on many units and many elements per unit."""
    units, n = 4000, 2000
    scale, shift = sample_noise(torch.Size([n, units]), **NOISE, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float32, device=torch.device("cpu"))
    mu, sigma = shift.mean(0), scale.mean(0)
    assert mu.min() > -0.5 - 0.01 and mu.max() < 0.5 + 0.01
    assert abs(mu.mean().item()) < 0.02 and abs(mu.var().item() - 1 / 12) < 0.01  # U(-.5,.5) var 1/12
    assert sigma.min() > 1 - 0.01 and sigma.max() < 1.25 + 0.01
    assert abs(sigma.mean().item() - 1.125) < 0.005
    spread = shift - mu  # m - mu_j ~ U(-0.1, 0.1): range 0.2, variance 0.01/3
    assert spread.abs().max() < 0.1 + 0.01 and abs(spread.var().item() - 0.01 / 3) < 2e-4
    z = scale - sigma  # s - sigma_j ~ N(0, 0.1)
    assert abs(z.std().item() - 0.1) < 0.002
    kurtosis = (z.pow(4).mean() / z.var().pow(2)).item()
    assert abs(kurtosis - 3) < 0.1  # Gaussian, not uniform (1.8)


def _cpu_noise(x, seed):
    """Noise drawn by the training path (CpuNoise on CPU tensors), generator seeded `seed`."""
    layer = DistributionNoise(**NOISE).train()
    layer.generator = torch.Generator().manual_seed(seed)
    return layer(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_noise_kernel_follows_algorithm_1(channels_last):
    """The compiled CPU path: x = 0 gives m, x = 1 gives s + m (same seed, same draws)."""
    zeros = torch.zeros(500, 400, 2, 2)
    if channels_last:
        zeros = zeros.contiguous(memory_format=torch.channels_last)
    shift = _cpu_noise(zeros, 3)
    scale = _cpu_noise(zeros + 1, 3) - shift
    assert shift.is_contiguous(memory_format=torch.channels_last) == channels_last
    per_unit = lambda t: t.transpose(0, 1).reshape(400, -1)  # noqa: E731
    mu, sigma = per_unit(shift).mean(1), per_unit(scale).mean(1)
    assert mu.min() > -0.5 - 0.01 and mu.max() < 0.5 + 0.01 and abs(mu.var().item() - 1 / 12) < 0.015
    assert sigma.min() > 1 - 0.01 and sigma.max() < 1.25 + 0.01 and abs(sigma.mean().item() - 1.125) < 0.01
    spread = per_unit(shift) - mu[:, None]
    assert spread.abs().max() < 0.1 + 0.01 and abs(spread.var().item() - 0.01 / 3) < 2e-4
    z = per_unit(scale) - sigma[:, None]
    assert abs(z.std().item() - 0.1) < 0.002
    assert abs((z.pow(4).mean() / z.var().pow(2)).item() - 3) < 0.1
    # the two 16-bit halves of one draw are independent: no correlation between s and m
    assert abs(torch.corrcoef(torch.stack([z.reshape(-1), spread.reshape(-1)]))[0, 1].item()) < 0.01


def test_cpu_noise_is_a_function_of_the_seed_and_differentiates_as_s():
    x = torch.randn(16, 8, 5, 5, requires_grad=True)
    y = _cpu_noise(x, 7)
    assert torch.equal(y, _cpu_noise(x, 7)) and not torch.equal(y, _cpu_noise(x, 8))
    scale = _cpu_noise(torch.ones_like(x), 7) - _cpu_noise(torch.zeros_like(x), 7)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.allclose(grad, scale, atol=1e-6)


def test_cpu_noise_in_bf16_is_the_float32_noise_rounded():
    x = torch.randn(32, 8, 4, 4)
    assert torch.equal(_cpu_noise(x.bfloat16(), 5), _cpu_noise(x.bfloat16().float(), 5).bfloat16())


def test_noise_is_per_position_in_conv_layers_and_off_in_eval():
    layer = DistributionNoise(**NOISE)
    layer.generator = torch.Generator().manual_seed(1)
    x = torch.ones(8, 3, 5, 5)
    y = layer.train()(x)
    assert y[:, 0].unique().numel() > 100  # every sample and position gets its own draw
    assert torch.equal(layer.eval()(x), x)
    off = DistributionNoise(**NOISE, enabled=False).train()
    assert torch.equal(off(x), x)


def test_noisy_batchnorm_is_batchnorm_then_noise():
    norm = make_norm("noisy_batchnorm", 4, True, NORM).train()
    norm[1].generator = torch.Generator().manual_seed(0)
    y = norm(conv_input())
    per_channel_mean = y.mean((0, 2, 3))
    assert per_channel_mean.abs().max() <= 0.5 + 0.1 + 0.05  # shifted by mu_j, within its range
    assert not torch.allclose(per_channel_mean, torch.zeros(4), atol=1e-3)


def test_unit_noise_is_algorithm_1_in_each_units_standardised_coordinates():
    """standard_unit_noise's reading of "the same noise": the draws applied to z = (a - mean_j) /
    std_j and mapped back, so the noise has the size relative to a unit's spread it has after
    BatchNorm. Scaling the input scales the output (absolute noise would not), and the gradient
    through it is the per-element factor s, as for the absolute noise."""
    x = conv_input().requires_grad_(True)
    unit = make_norm("standard_unit_noise", 4, True, replace(NORM, variant="standard_unit_noise")).train()
    plain = DistributionNoise(**NOISE).train()
    for layer in (unit[1], plain):
        layer.generator = torch.Generator().manual_seed(5)
    y = unit(x)
    mean = x.detach().mean((0, 2, 3), keepdim=True)
    std = (x.detach().var((0, 2, 3), unbiased=False, keepdim=True) + NORM.eps).sqrt()
    assert torch.allclose(y, mean + std * plain((x.detach() - mean) / std), atol=1e-5)
    for layer in (unit[1], plain):
        layer.generator = torch.Generator().manual_seed(5)
    assert torch.allclose(unit(10 * x.detach()), 10 * y.detach(), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain(10 * x.detach()), 10 * plain(x.detach()), atol=1e-2)
    unit[1].generator = torch.Generator().manual_seed(5)
    y = unit(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert 0.5 < grad.min() and grad.max() < 2 and grad.std() > 0.01  # s ~ N(sigma_j, 0.1), sigma_j in [1, 1.25]


# ---------------------------------------------------------------------------------------------
# the normalisers beyond the paper


@pytest.mark.parametrize("variant, axes, other", [
    ("layernorm", (1, 2, 3), (0, 2, 3)),      # each sample over channels and positions; not per channel
    ("instancenorm", (2, 3), (1,)),           # each sample and channel over positions; not over channels
    ("groupnorm", None, (0, 2, 3)),           # each sample over groups of 2 channels; not per channel
])
def test_activation_normalisers_standardise_their_own_axes_only(variant, axes, other):
    x = conv_input() * torch.linspace(0.5, 3, 4).view(1, 4, 1, 1)  # channels of different scales
    norm = make_norm(variant, 4, True, replace(NORM, variant=variant, settings=(("group_size", 2),))).train()
    y = norm(x).detach()
    if variant == "groupnorm":
        grouped = y.view(y.shape[0], 2, -1)  # 2 groups of 2 channels
        mean, var = grouped.mean(-1), grouped.var(-1, unbiased=False)
    else:
        mean, var = y.mean(axes), y.var(axes, unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-4)  # 1 up to eps / variance
    across = y.mean(other)  # along other axes (BatchNorm's, for two of them) they are not centred
    assert across.abs().max() > 0.05


def test_instancenorm_refuses_a_linear_layer():
    with pytest.raises(ValueError, match="spatial positions"):
        make_norm("instancenorm", 4, False, replace(NORM, variant="instancenorm"))


def test_weightnorm_filters_have_exactly_their_learned_norm():
    from bnstudy.models.networks import WNConv2d, WNLinear, filter_norms

    torch.manual_seed(0)
    for layer, x in ((WNConv2d(3, 5, 3, padding=1), torch.randn(2, 3, 6, 6)), (WNLinear(7, 4), torch.randn(2, 7))):
        layer.init_gain()
        assert torch.allclose(filter_norms(layer.normed_weight()), filter_norms(layer.weight))  # starts as w
        with torch.no_grad():
            layer.gain.copy_(torch.linspace(0.5, 2.0, layer.gain.numel()))
            layer.weight.mul_(3.7)  # the direction's own scale does not matter
        assert torch.allclose(filter_norms(layer.normed_weight()), layer.gain, rtol=1e-6, atol=0)
        layer(x).sum().backward()
        assert layer.gain.grad is not None and layer.weight.grad is not None
