"""Networks: layer counts and numbering, placement of the normaliser, init, no global RNG use."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from bnstudy.models.networks import build_model, loss_fn
from bnstudy.config.plan import plan

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


def test_mlp_hidden_layers_repeats_one_width_and_leaves_other_runs_alone(tmp_path):
    """model.hidden_layers (Yang et al. 2019's depth grids): n equal-width layers; unset, the MLP is
    the layers `hidden` lists, its spec JSON and run id as before the key existed; a config that
    sets it where it cannot apply names the key."""
    from helpers import smoke_raw

    from bnstudy.configure import load_config
    from bnstudy.errors import ConfigError

    spec = spec_for(tmp_path, "mlp-batchnorm")
    assert "hidden_layers" not in spec.to_dict()["model"] and spec.model.hidden_layers is None
    deep = replace(spec, model=replace(spec.model, hidden=(16,), hidden_layers=12))
    model = build_model(deep)
    assert [b.layer.out_features for b in model.blocks] == [16] * 12
    assert model(torch.zeros(2, *spec.dataset.shape)).shape == (2, 10)

    raw = smoke_raw(tmp_path / "r")
    raw["setups"]["mlp"]["model"]["hidden_layers"] = 4   # hidden lists three widths of 16: one width
    raw["setups"]["mlp"]["model"]["hidden"] = [16]
    grid = plan(load_config(raw))
    four = next(s for r, s in grid.runs.items() if r.startswith("mlp-batchnorm"))
    assert four.model.hidden_layers == 4 and four.run != spec.run
    raw["setups"]["mlp"]["model"]["hidden"] = [16, 8]
    with pytest.raises(ConfigError, match="hidden_layers.*give one width"):
        load_config(raw)
    raw["setups"]["mlp"]["model"]["hidden"] = [16]
    raw["setups"]["vgg"]["model"]["hidden_layers"] = 4
    with pytest.raises(ConfigError, match="setups.vgg.model.hidden_layers.*only arch mlp"):
        load_config(raw)


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


def test_resnet20_is_he_et_als_cifar_network(tmp_path):
    """ResNet-20 (He et al. 2016, section 4.2): a stem and 3 stages of 3 basic blocks at 16, 32, 64
    channels, 0.27M parameters, identity shortcuts (option A: subsampled, zero-padded), so every
    parameter belongs to a normalised layer or the output layer."""
    from bnstudy.config.architectures import layer_widths, normalised_layers, resnet_layer_names
    from bnstudy.models.networks import ZeroPadShortcut

    spec = spec_for(tmp_path, "vgg-batchnorm")
    spec = replace(spec, model=replace(spec.model, arch="resnet", depth=20, width=1.0))
    model = build_model(spec)
    assert len(model.blocks) == 19 == normalised_layers({"arch": "resnet", "depth": 20}) == len(resnet_layer_names(20))
    assert [b.layer.out_channels for b in model.blocks] == [16] * 7 + [32] * 6 + [64] * 6 == \
        layer_widths({"arch": "resnet", "depth": 20, "width": 1.0})
    trainable = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < trainable < 0.28e6
    grouped = {n for group in model.layer_groups() for n in group}
    assert {n for n, _ in model.named_parameters()} - grouped == {"output.weight", "output.bias"}
    shortcut = ZeroPadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4) and torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert resnet_layer_names(20)[:3] == ["stem", "s1 b1 c1", "s1 b1 c2"]


@pytest.fixture(scope="module")
def vgg_spec(tmp_path_factory):
    return spec_for(tmp_path_factory.mktemp("variants"), "vgg-batchnorm")


@pytest.mark.parametrize("variant", sorted(__import__("bnstudy.config.variants", fromlist=["VARIANTS"]).VARIANTS))
def test_every_variant_builds_and_takes_a_training_step(vgg_spec, variant):
    """Every VARIANTS row builds the VGG with its normaliser after each conv and takes one SGD step
    that changes the weights and leaves the loss finite: a row whose normaliser is missing from
    the registry, or builds the wrong module, fails here."""
    from bnstudy.models.norms import NORMALISERS
    from bnstudy.config.variants import VARIANTS

    spec = replace(vgg_spec, norm=replace(vgg_spec.norm, variant=variant))
    model = build_model(spec)
    expected = type(NORMALISERS[VARIANTS[variant].norm](8, True, VARIANTS[variant], spec.norm))
    first = model.blocks[0].norm
    assert isinstance(first[0] if isinstance(first, nn.Sequential) else first, expected)
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    loss = loss_fn(spec)(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.01 * p.grad
    assert torch.isfinite(loss) and any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_a_variant_naming_an_unknown_normaliser_is_refused():
    from bnstudy.models.norms import NORMALISERS
    from bnstudy.config.variants import NORMS, Variant

    assert set(NORMALISERS) == set(NORMS)
    with pytest.raises(ValueError, match="no such normaliser; known"):
        Variant("batc")
    with pytest.raises(ValueError, match="needs one"):
        Variant("lp")


def test_a_normaliser_is_one_record_added_from_a_module_outside_the_package(tmp_path):
    """A normaliser written in a module of its own (RMSNorm over each sample's channels, with a
    setting of its own, `norm.rms_gain`): `register` adds its record, builder and variant; the next
    schema offers the variant and the setting, a config using it plans (a grid over the setting
    too), the network carries the new module built with the run's value, and the other runs keep
    their ids: the setting enters only its own runs' specs, as GroupNorm's group_size does."""
    from helpers import import_file, smoke_raw

    from bnstudy.configure import load_config
    from bnstudy.configure import load_schema
    from bnstudy.config.spec import RunSpec, added, applies
    from bnstudy.config.variants import NORMALISER_RECORDS, VARIANTS, Normaliser
    from bnstudy.models import norms

    raw = smoke_raw(tmp_path / "r")
    before = set(plan(load_config(raw)).runs)

    module = tmp_path / "rms_norm.py"
    module.write_text(
        "import torch\n"
        "from bnstudy.config.variants import Normaliser\n"
        "from bnstudy.models.norms import register\n\n"
        "class RMSNorm(torch.nn.Module):\n"
        "    def __init__(self, features, eps, gain):\n"
        "        super().__init__()\n"
        "        self.weight, self.eps = torch.nn.Parameter(torch.full((features,), float(gain))), eps\n"
        "    def forward(self, x):\n"
        "        scale = x.pow(2).mean(dim=tuple(range(1, x.ndim)), keepdim=True).add(self.eps).rsqrt()\n"
        "        shape = (1, -1) + (1,) * (x.ndim - 2)\n"
        "        return x * scale * self.weight.view(shape)\n\n"
        "GAIN = {'type': 'number', 'exclusiveMinimum': 0, 'default': 1.0, 'description': 'rms: initial gain'}\n"
        "register('rms', Normaliser(per_sample=True, settings={'rms_gain': GAIN}),\n"
        "         lambda features, spatial, variant, norm: RMSNorm(features, norm.eps, norm.setting('rms_gain')),\n"
        "         {'rmsnorm': {}})\n")
    try:
        loaded = import_file(module)
        schema = load_schema()
        assert "rmsnorm" in schema["definitions"]["variant"]["enum"]
        assert schema["definitions"]["setup"]["properties"]["norm"]["properties"]["rms_gain"]["default"] == 1.0
        assert added()["norm.rms_gain"] == 1.0
        assert applies("norm.rms_gain", {"norm": {"variant": "rmsnorm"}})
        assert not applies("norm.rms_gain", {"norm": {"variant": "batchnorm"}})
        with pytest.raises(ValueError, match="registered twice"):
            norms.register("rms", NORMALISER_RECORDS["rms"], norms.NORMALISERS["rms"], {})
        with pytest.raises(ValueError, match="belong to another normaliser"):
            norms.register("rms2", Normaliser(settings={"rms_gain": {"default": 2.0}}), norms.NORMALISERS["rms"], {})
        study = next(s for s in raw["studies"].values() if s.get("setup") == "vgg")
        study["variants"] = [*study["variants"], "rmsnorm"]
        study["grid"] = {**study.get("grid", {}), "norm.rms_gain": [1.0, 0.5]}
        runs = plan(load_config(raw)).runs
        assert before <= set(runs)                                  # the other runs keep their ids
        new = [s for r, s in runs.items() if r not in before]
        assert {s.norm.variant for s in new} == {"rmsnorm"}
        assert {s.norm.setting("rms_gain") for s in new} == {0.5, 1.0}
        for spec in new:                                            # in the JSON form only away from its default
            assert ("rms_gain" in spec.to_dict()["norm"]) == (spec.norm.setting("rms_gain") != 1.0)
            assert RunSpec.from_dict(spec.to_dict()) == spec
        half = next(s for s in new if s.norm.setting("rms_gain") == 0.5)
        model = build_model(half)
        assert all(isinstance(b.norm, loaded.RMSNorm) for b in model.blocks)
        assert all(torch.all(b.norm.weight == 0.5) for b in model.blocks)
        assert torch.isfinite(model(torch.randn(2, *half.dataset.shape))).all()
    finally:
        NORMALISER_RECORDS.pop("rms", None)
        norms.NORMALISERS.pop("rms", None)
        VARIANTS.pop("rmsnorm", None)
    assert "rmsnorm" not in load_schema()["definitions"]["variant"]["enum"]
    assert "norm.rms_gain" not in added()
    # GroupNorm's setting lives on its record the same way: schema and run-id rule follow
    group = NORMALISER_RECORDS["group"]
    norm_schema = load_schema()["definitions"]["setup"]["properties"]["norm"]["properties"]
    assert norm_schema["group_size"] == group.settings["group_size"]
    assert added()["norm.group_size"] == group.settings["group_size"]["default"]
    assert applies("norm.group_size", {"norm": {"variant": "groupnorm"}})
    assert not applies("norm.group_size", {"norm": {"variant": "batchnorm"}})
