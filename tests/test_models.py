"""Networks: layer counts and numbering, placement of the normaliser, init, no global RNG use."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from bnstudy.models import build_model, loss_fn
from bnstudy.plan import plan

from helpers import smoke_config


def spec_for(tmp_path, prefix):
    p = plan(smoke_config(tmp_path))
    return next(s for r, s in p.runs.items() if r.startswith(prefix))


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_has_one_normalised_layer_per_conv(tmp_path, depth, convs):
    spec = spec_for(tmp_path, "vgg-batchnorm")
    spec = replace(spec, model=replace(spec.model, depth=depth))
    model = build_model(spec)
    assert len(model.blocks) == convs == len(model.layer_groups())
    assert all(isinstance(b.norm, nn.BatchNorm2d) for b in model.blocks)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_layer_groups_start_with_the_main_weight(tmp_path):
    model = build_model(spec_for(tmp_path, "vgg-batchnorm"))
    params = dict(model.named_parameters())
    for block, group in zip(model.blocks, model.layer_groups()):
        assert params[group[0]] is block.layer.weight
        assert params[group[-1]] is block.norm.bias  # BN's affine parameters belong to the layer


def test_head_layers_are_normalised_too(tmp_path):
    spec = spec_for(tmp_path, "vgg-batchnorm")
    spec = replace(spec, model=replace(spec.model, head=(32, 16)))
    assert len(build_model(spec).blocks) == 8 + 2


def test_dln_is_25_square_linear_layers_without_bias(tmp_path):
    spec = spec_for(tmp_path, "dln-batchnorm")
    model = build_model(spec)
    assert len(model.blocks) == 25
    assert all(b.layer.weight.shape == (10, 10) and b.layer.bias is None for b in model.blocks)
    assert isinstance(model.blocks[0].norm, nn.BatchNorm1d) and isinstance(model.blocks[-1].norm, nn.Identity)
    x = torch.randn(5, 10)
    assert loss_fn(spec)(model(x), x).ndim == 0


def test_mlp_is_the_2015_sigmoid_network(tmp_path):
    spec = spec_for(tmp_path, "mlp-batchnorm")
    model = build_model(spec)
    assert tuple(b.layer.out_features for b in model.blocks) == spec.model.hidden
    assert all(isinstance(b.act, nn.Sigmoid) for b in model.blocks)


def test_glorot_init_is_seeded_and_leaves_global_rng_alone(tmp_path):
    spec = spec_for(tmp_path, "vgg-standard")
    state = torch.get_rng_state()
    a, b = build_model(spec), build_model(spec)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    w = a.blocks[2].layer.weight
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    other = build_model(replace(spec, seed=spec.seed + 1))
    assert not torch.equal(other.blocks[0].layer.weight, a.blocks[0].layer.weight)


def test_normaliser_sits_before_the_nonlinearity(tmp_path):
    model = build_model(spec_for(tmp_path, "vgg-batchnorm")).train()
    seen = {}
    model.blocks[1].act.register_forward_pre_hook(lambda m, a: seen.setdefault("z", a[0]))
    model(torch.randn(16, 3, 32, 32))
    z = seen["z"]
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4)
