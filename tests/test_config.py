"""Config validation: unknown keys, wrong types and impossible values are errors that name the key."""

import copy

import pytest
import yaml

from bnstudy.config import ConfigError, checkpoint_steps, load_config, plan

from helpers import REPO


def raw(name="config.yaml"):
    return yaml.safe_load((REPO / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml", "cifar10-cpu.yaml"])
def test_shipped_configs_validate_and_plan(name):
    p = plan(load_config(REPO / "config" / name))
    assert p.runs and all(p.study_runs.values())


def test_defaults_are_filled():
    cfg = load_config(raw("smoke.yaml"))
    assert cfg["setups"]["vgg"]["norm"]["noise"] == {"n_mu": 0.5, "n_sigma": 1.25, "r_mu": 0.1, "r_sigma": 0.1}
    assert cfg["setups"]["vgg"]["model"]["init"] == "glorot_uniform"
    assert cfg["studies"]["landscape"]["landscape"]["eta_max"] == 4.0


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["setups"]["vgg"]["model"].__setitem__("widht", 1), "setups.vgg.model: Additional properties"),
    (lambda c: c["studies"]["performance"].__setitem__("variants", ["batchnrom"]), "studies.performance.variants.0"),
    (lambda c: c["studies"]["performance"].__setitem__("lrs", [-0.1]), "studies.performance.lrs.0"),
    (lambda c: c["setups"]["vgg"]["optim"].__setitem__("steps", "many"), "setups.vgg.optim.steps"),
    (lambda c: c.__setitem__("studies", {**c["studies"], "nonsense": {}}), "allowed keys"),
    (lambda c: c["datasets"]["images"].__setitem__("source", "imagenet"), "datasets.images.source"),
])
def test_bad_values_name_the_key(mutate, expected):
    cfg = raw("smoke.yaml")
    mutate(cfg)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        load_config(cfg)


def test_enum_error_lists_allowed_values():
    cfg = raw("smoke.yaml")
    cfg["studies"]["performance"]["variants"] = ["batchnrom"]
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "noisy_batchnorm" in str(err.value) and "linf" in str(err.value)


def test_grid_key_must_exist_and_values_validate():
    cfg = raw("smoke.yaml")
    cfg["studies"]["performance"]["grid"] = {"model.init_scael": [1.0]}
    with pytest.raises(ConfigError, match="studies.performance.grid.model.init_scael"):
        load_config(cfg)
    cfg["studies"]["performance"]["grid"] = {"model.dropout": [1.5]}
    with pytest.raises(ConfigError, match="dropout"):
        load_config(cfg)


def test_unknown_setup_is_named():
    cfg = raw("smoke.yaml")
    cfg["studies"]["performance"]["setup"] = "resnet"
    with pytest.raises(ConfigError, match="studies.performance.setup: 'resnet'"):
        load_config(cfg)


def test_shared_runs_are_planned_once():
    cfg = load_config(raw("smoke.yaml"))
    p = plan(cfg)
    # performance, landscape and curvature ask for the same vgg standard/batchnorm runs
    assert set(p.study_runs["landscape"]) == set(p.study_runs["performance"])
    assert len(p.runs) == len({r for runs in p.study_runs.values() for r in runs})


def test_changing_one_study_leaves_other_run_ids_alone():
    cfg = raw("config.yaml")
    before = plan(load_config(cfg))
    changed = copy.deepcopy(cfg)
    changed["studies"]["claim_sigmoid"]["lrs"] = [0.05]
    after = plan(load_config(changed))
    for study in before.study_runs:
        if study != "claim_sigmoid":
            assert before.study_runs[study] == after.study_runs[study]
    assert not set(before.study_runs["claim_sigmoid"]) & set(after.study_runs["claim_sigmoid"])


def test_grid_and_overrides_reach_the_spec():
    p = plan(load_config(raw("config.yaml")))
    scales = {p.runs[r]["model"]["init_scale"] for r in p.study_runs["claim_initialisation"]}
    assert scales == {0.25, 1.0, 4.0}
    assert {p.runs[r]["model"]["activation"] for r in p.study_runs["claim_sigmoid"]} == {"sigmoid"}


def test_checkpoint_schedule_is_dense_early():
    assert checkpoint_steps({"dense_until": 40, "dense_every": 20, "every": 100}, 250) == [0, 20, 40, 100, 200, 250]


def test_paper_config_matches_the_paper():
    cfg = load_config(REPO / "config" / "paper.yaml")
    vgg = cfg["setups"]["vgg"]
    assert vgg["optim"] == {"steps": 15000, "batch_size": 128, "momentum": 0.0, "weight_decay": 0.0}
    assert vgg["model"]["depth"] == 16 and vgg["model"]["head"] == []  # 13 normalised layers
    assert vgg["augment"] == {"crop": 0, "flip": False}
    assert set(cfg["studies"]["performance"]["lrs"]) == {0.1, 0.5}
    assert len(cfg["studies"]["performance"]["seeds"]) >= 3
    dln = cfg["setups"]["dln"]
    assert dln["model"]["depth"] == 25 and dln["optim"]["batch_size"] is None
    assert dln["optim"]["steps"] == 10000
    assert cfg["datasets"]["linear"]["n_train"] == 1000
