"""Config validation: unknown keys, wrong types and impossible values are errors that name the key."""

import copy

import pytest
import yaml

from bnstudy.config.catalog import ANALYSES
from bnstudy.configure import ConfigError, load_config
from bnstudy.config.plan import checkpoint_steps, plan

from helpers import REPO


def raw(name="config.yaml"):
    return yaml.safe_load((REPO / "config" / name).read_text())


def fake_imagefolder(root, classes=10, per_class=13):
    """Empty files in class folders: enough for the config checks, which count images."""
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.jpg").touch()
    return root


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml", "cifar10-cpu.yaml", "cifar10-cpu-lr.yaml",
                                  "cifar10-cpu-beyond.yaml", "cifar10-cpu-normalisers.yaml",
                                  "cifar10-cpu-depth.yaml"])
def test_shipped_configs_validate_and_plan(name, tmp_path):
    cfg = raw(name)
    for dataset in cfg["datasets"].values():  # the CIFAR-10 JPEGs are not in a checkout
        if dataset["source"] == "imagefolder":
            dataset["root"] = str(fake_imagefolder(tmp_path / "images", per_class=100))
    config = load_config(cfg)
    p = plan(config)
    assert p.runs and all(p.study_runs.values())
    for study, analyses in p.study_analyses.items():  # every analysis block of a study is planned
        assert set(analyses) == {a for a in ANALYSES if a in config["studies"][study]}


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
    (lambda c: c.__setitem__("studies", {**c["studies"], "nonsense": {}}), "studies.nonsense: 'setup' is a required"),
    (lambda c: c["datasets"]["images"].__setitem__("source", "imagenet"), "datasets.images.source"),
])
def test_bad_values_name_the_key(mutate, expected):
    cfg = raw("smoke.yaml")
    mutate(cfg)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        load_config(cfg)


def smoke_with(**studies):
    cfg = raw("smoke.yaml")
    cfg["studies"].update(studies)
    return cfg


def images_at(root):
    def mutate(c):
        c["datasets"]["images"] = {"source": "imagefolder", "root": str(root), "classes": 10}
    return mutate


# Every bad config stops at parse time (load_config is what the Snakefile runs before any job),
# naming the key path, the bad value and what is allowed.
BAD_CONFIGS = {
    "vgg depth without a layer table": (
        lambda c: c["setups"]["vgg"]["model"].__setitem__("depth", 12),
        "setups.vgg.model.depth: 12", "VGG depths are 11, 13, 16, 19"),
    "vgg depth in a grid": (
        lambda c: c["studies"]["performance"].__setitem__("grid", {"model.depth": [11, 12]}),
        "studies.performance.grid[model.depth=12].model.depth: 12", "VGG depths"),
    "tracking URI with an unknown scheme": (
        lambda c: c["tracking"].__setitem__("uri", "ftp://tracking.example.org"),
        "tracking.uri: 'ftp://tracking.example.org'", "MLflow URI schemes"),
    "batch larger than the training set": (
        lambda c: c["setups"]["vgg"]["optim"].__setitem__("batch_size", 300),
        "setups.vgg.optim.batch_size: 300", "has 256 training samples"),
    "analysis batch larger than the training set": (
        lambda c: c["studies"]["landscape"]["landscape"].__setitem__("batch_size", 999),
        "studies.landscape.landscape.batch_size: 999", "256 samples"),
    "curvature step beyond the run": (
        lambda c: c["studies"]["curvature"]["curvature"].__setitem__("steps", [0, 40]),
        "studies.curvature.curvature.steps.1: 40", "save steps [0, 4, 12]"),
    "analysis step that is not a checkpoint": (
        lambda c: c["studies"]["ics_dln"]["ics"].__setitem__("steps", [5]),
        "studies.ics_dln.ics.steps.0: 5", "checkpoints"),
    "figure layer beyond the network": (
        lambda c: c["studies"]["performance"].__setitem__("layers", [3, 9]),
        "studies.performance.layers.1: 9", "8 normalised layers"),
    "DLN layer beyond its depth": (
        lambda c: c["studies"]["ics_dln"].__setitem__("layers", [9, 26]),
        "studies.ics_dln.layers.1: 26", "25 normalised layers"),
    "landscape range upside down": (
        lambda c: c["studies"]["landscape"]["landscape"].update(eta_min=4.0, eta_max=0.5),
        "studies.landscape.landscape.eta_min: 4.0", "below eta_max"),
    "NaN learning rate": (
        lambda c: c["studies"]["performance"].__setitem__("lrs", [float("nan")]),
        "studies.performance.lrs.0: nan", "finite"),
    "infinite learning rate": (
        lambda c: c["studies"]["claim_learning_rate"].__setitem__("lrs", [0.1, float("inf")]),
        "studies.claim_learning_rate.lrs.1: inf", "finite"),
    "imagefolder root that does not exist": (
        images_at("/nonexistent/cifar10-jpeg"),
        "datasets.images.root: '/nonexistent/cifar10-jpeg'", "train/<class>/"),
    "cifar10 subset larger than CIFAR-10": (
        lambda c: c["datasets"].__setitem__("cifar", {"source": "cifar10", "download": True, "n_train": 60000}),
        "datasets.cifar.n_train: 60000", "50000"),
    "torchvision root missing without download": (
        lambda c: c["datasets"].__setitem__("cifar", {"source": "cifar10", "root": "/nonexistent/c10"}),
        "datasets.cifar.root: '/nonexistent/c10'", "download: true"),
    "synthetic data without a size": (
        lambda c: c["datasets"]["images"].__setitem__("n_train", None),
        "datasets.images.n_train: None", "positive integer"),
    "DLN on images": (
        lambda c: c["setups"]["vgg"]["model"].__setitem__("arch", "dln"),
        "setups.vgg.model.arch: 'dln'", "gaussian dataset"),
    "VGG on 28-pixel digits": (
        lambda c: c["setups"]["mlp"]["model"].__setitem__("arch", "vgg"),
        "datasets.digits.image_size: 28", "at least 32"),
    "figure kind that needs an analysis the study lacks": (
        lambda c: c["studies"]["performance"].__setitem__("figures", ["accuracy", "ics"]),
        "studies.performance.figures.1: 'ics'", "add a `ics:` block"),
    "unknown figure kind": (
        lambda c: c["studies"]["performance"].__setitem__("figures", ["acuracy"]),
        "studies.performance.figures.0: 'acuracy' is not one of", "accuracy_vs_lr"),
    "figure against a setting the study does not vary": (
        lambda c: c["studies"]["performance"].__setitem__("figures", ["accuracy_vs_init_scale"]),
        "studies.performance.figures.0: 'accuracy_vs_init_scale'", "model.init_scale"),
    "claim whose variants the study lacks": (
        lambda c: c["studies"]["performance"].__setitem__("claims", ["noisy_bn_trains"]),
        "studies.performance.claims.0: 'noisy_bn_trains'", "add ['noisy_batchnorm']"),
    "best-lr claim with one learning rate": (
        lambda c: c["studies"]["performance"].__setitem__("claims", ["initialisation"]),
        "studies.performance.claims.0: 'initialisation'", "at least 2 lrs"),
    "dropout claim without a dropout-free run": (
        lambda c: c["studies"]["performance"].update(claims=["regularisation"],
                                                     grid={"model.dropout": [0.2, 0.5]}),
        "studies.performance.claims.0: 'regularisation'", "include 0"),
    "sigmoid claim on a ReLU network": (
        lambda c: c["studies"]["performance"].update(claims=["sigmoid"], lrs=[0.1, 0.5]),
        "studies.performance.claims.0: 'sigmoid'", "model.activation: sigmoid"),
    "study name that is not a name": (
        lambda c: c["studies"].__setitem__("My Study", dict(c["studies"]["performance"])),
        "studies: 'My Study' does not match", "lower case"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_at_parse_time_naming_the_key(case):
    mutate, key, allowed = BAD_CONFIGS[case]
    cfg = raw("smoke.yaml")
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    message = str(err.value)
    assert key in message and allowed in message, message


def test_a_prepared_dataset_needs_no_source_folder(tmp_path):
    """Once results/data/<name>.pt exists, the raw images may be gone: no error for the root."""
    cfg = raw("smoke.yaml")
    cfg["results"] = str(tmp_path / "results")
    images_at(tmp_path / "gone")(cfg)
    with pytest.raises(ConfigError, match="datasets.images.root"):
        load_config(cfg)
    (tmp_path / "results" / "data").mkdir(parents=True)
    (tmp_path / "results" / "data" / "images.pt").touch()
    assert load_config(cfg)["datasets"]["images"]["root"] == str(tmp_path / "gone")


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
    cfg["studies"]["performance"]["setup"] = "vgg16"
    with pytest.raises(ConfigError, match="studies.performance.setup: 'vgg16'"):
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
    changed["studies"]["claim_sigmoid"]["lrs"] = [0.05, 0.2]
    after = plan(load_config(changed))
    for study in before.study_runs:
        if study != "claim_sigmoid":
            assert before.study_runs[study] == after.study_runs[study]
    assert not set(before.study_runs["claim_sigmoid"]) & set(after.study_runs["claim_sigmoid"])


def test_grid_and_overrides_reach_the_spec():
    p = plan(load_config(raw("config.yaml")))
    scales = {p.runs[r].model.init_scale for r in p.study_runs["claim_initialisation"]}
    assert scales == {0.25, 1.0, 4.0}
    assert {p.runs[r].model.activation for r in p.study_runs["claim_sigmoid"]} == {"sigmoid"}
    # the MLflow display names tell those runs apart
    names = [p.names[r] for r in p.study_runs["claim_initialisation"]]
    assert len(set(names)) == len(names) and any(n.endswith(" init_scale=0.25") for n in names), names
    assert all(p.names[r].endswith(" activation=sigmoid") for r in p.study_runs["claim_sigmoid"])


def test_checkpoint_schedule_is_dense_early():
    assert checkpoint_steps({"dense_until": 40, "dense_every": 20, "every": 100}, 250) == [0, 20, 40, 100, 200, 250]
    # `at` adds steps the schedule would skip (Bjorck et al.'s step 10), none past the end
    assert checkpoint_steps({"dense_until": 40, "dense_every": 20, "every": 100, "at": [10, 300]}, 250) == \
        [0, 10, 20, 40, 100, 200, 250]


def test_paper_config_matches_the_paper():
    cfg = load_config(REPO / "config" / "paper.yaml")
    vgg = cfg["setups"]["vgg"]
    assert vgg["optim"] == {"steps": 15000, "batch_size": 128, "momentum": 0.0, "weight_decay": 0.0,
                            "loss_reduction": None, "loss": "cross_entropy", "train_only": "all"}
    assert vgg["model"]["depth"] == 16 and vgg["model"]["head"] == []  # 13 normalised layers
    assert vgg["augment"] == {"crop": 0, "flip": False}
    assert set(cfg["studies"]["performance"]["lrs"]) == {0.1, 0.5}
    assert len(cfg["studies"]["performance"]["seeds"]) >= 3
    dln = cfg["setups"]["dln"]
    assert dln["model"]["depth"] == 25 and dln["optim"]["batch_size"] is None
    assert dln["optim"]["steps"] == 10000
    assert cfg["datasets"]["linear"]["n_train"] == 1000
    spec = next(s for s in plan(cfg).runs.values() if s.model.arch == "dln")
    assert spec.optim.loss_reduction == "sum"  # ||W X - A X||^2 over the 1000 samples


def test_a_claim_its_seeds_cannot_decide_is_refused_at_parse_time():
    """Every row's test must be able to decide with the study's seeds: an exact sign-flip test over
    n seeds cannot go below p = 1/2^n (5 seeds at alpha 0.05), a t interval needs 3 (with 2 its
    df = 1). One line per row that cannot, naming the claim, the row and what it needs."""
    cfg = raw("config.yaml")
    cfg.pop("claim_rules")  # the demo allows undecidable studies config-wide: this test does not
    for name, study in cfg["studies"].items():
        if name not in ("claim_learning_rate", "ics"):
            study["enabled"] = False
    cfg["studies"]["ics"]["seeds"] = [0, 1, 2]
    study = cfg["studies"]["claim_learning_rate"]
    study["seeds"] = [0, 1, 2]
    with pytest.raises(ConfigError) as error:
        load_config(cfg)
    message = str(error.value)
    assert ("studies.claim_learning_rate.seeds: 3 seeds cannot decide claim higher_learning_rates, row usable_lr"
            " (exact sign-flip test): it needs at least 5 seeds") in message
    assert "allow_undecidable" in message
    study["claim_rules"] = {**study.get("claim_rules", {}), "alpha": 0.125}  # 1/2^3: now decidable
    load_config(cfg)
    study["claim_rules"] = {"alpha": 0.05, "allow_undecidable": True}
    load_config(cfg)
    cfg["studies"]["ics"]["seeds"] = [0, 1]  # a t interval needs three seeds
    with pytest.raises(ConfigError) as error:
        load_config(cfg)
    lines = str(error.value).splitlines()
    assert "studies.ics.seeds: 2 seeds cannot decide claim reduces_ics, row relative (t interval): it needs at " \
           "least 3 seeds" in lines[0]
    assert sum("row angle" in line for line in lines) == 1  # one line per row, not per window
    cfg["claim_rules"] = {"t_interval_seeds": 2}  # config-wide gates reach every study
    load_config(cfg)


def test_the_claims_check_their_study_and_the_config_stage_does_not_read_them():
    """The config stage parses a study without reading the claim records (its imports run one way);
    the entry points' `load_config` adds the claims' checks: an unknown kind, too few seeds."""
    from bnstudy.config.load import parse_config

    cfg = raw("config.yaml")
    cfg.pop("claim_rules")
    for name, study in cfg["studies"].items():
        study["enabled"] = name in ("performance", "ics")
    cfg["studies"]["ics"]["seeds"] = [0, 1]
    cfg["studies"]["performance"]["claims"] = ["no_such_claim"]
    parsed = parse_config(cfg)
    assert parsed["studies"]["ics"]["seeds"] == [0, 1]
    with pytest.raises(ConfigError, match=r"studies\.performance\.claims\.0: 'no_such_claim' is not one of"):
        load_config(cfg)
    cfg["studies"]["performance"]["claims"] = []
    with pytest.raises(ConfigError, match=r"studies\.ics\.seeds: 2 seeds cannot decide claim reduces_ics"):
        load_config(cfg)


@pytest.mark.parametrize("name", ["paper.yaml", "cifar10-cpu.yaml", "cifar10-cpu-lr.yaml", "cifar10-cpu-beyond.yaml",
                                  "cifar10-cpu-normalisers.yaml", "cifar10-cpu-depth.yaml"])
def test_the_shipped_study_configs_can_decide_every_claim(name, tmp_path):
    from bnstudy.claims import ClaimRules
    from bnstudy.claims import get as claim

    cfg = raw(name)
    for dataset in cfg["datasets"].values():
        if dataset["source"] == "imagefolder":
            dataset["root"] = str(fake_imagefolder(tmp_path / "images", per_class=100))
    config = load_config(cfg)
    for study in config["studies"].values():
        rules = ClaimRules().overridden(study.get("claim_rules"))
        assert not rules.allow_undecidable
        for kind in study["claims"]:
            assert len(study["seeds"]) >= claim(kind).seeds_needed(rules), (study, kind)


def test_the_cpu_cifar_configs_split_the_study_without_losing_any_of_it(tmp_path):
    """config/cifar10-cpu*.yaml: five runs sized to a 2-core CPU (the follow-ups were one config
    until its run proved about twice too long). Together they hold every study the CPU run
    answers, each once, on one network and one data set (so their digests compare), with the
    paper's section 3.3 lp-normalisation study, the ICS study's lr 0.01 arm and the deep linear
    network at the paper's 10,000 steps."""
    names = ["cifar10-cpu.yaml", "cifar10-cpu-lr.yaml", "cifar10-cpu-beyond.yaml", "cifar10-cpu-normalisers.yaml",
             "cifar10-cpu-depth.yaml"]
    configs = {name: raw(name) for name in names}
    studies = [study for cfg in configs.values() for study in cfg["studies"]]
    assert len(studies) == len(set(studies))                      # no study twice
    for wanted in ("performance", "ics", "lp_norms", "ics_dln", "claim_learning_rate", "matched_lr", "bn_only",
                   "depth_at_init", "depth_at_init_mlp", "hessian_spectrum", "edge_of_stability", "landscape_2d",
                   "normalisers", "normalisers_resnet", "group_size", "scale_invariance"):
        assert wanted in studies, wanted
    assert len({cfg["results"] for cfg in configs.values()}) == len(names)  # each run its own results folder
    vgg = [cfg["setups"]["vgg"] for cfg in configs.values()]
    assert all(setup == vgg[0] for setup in vgg)
    paper = configs["cifar10-cpu.yaml"]
    assert 0.01 in paper["studies"]["ics"]["lrs"] and paper["setups"]["dln"]["optim"]["steps"] == 10_000
    assert paper["studies"]["lp_norms"]["variants"] == ["standard", "batchnorm", "l1", "l2", "linf"]


def test_run_specs_are_typed_outside_the_config_stage():
    """Outside bnstudy.config a run spec is a `RunSpec` (attributes), or a spec.json read through
    the one dotted-key helper (`bnstudy.config.spec.lookup`): no `spec["..."]` anywhere else."""
    import re

    package = REPO / "src" / "bnstudy"
    found = [f"{path.relative_to(package)}:{number}: {line.strip()}"
             for path in sorted(package.rglob("*.py")) if path.relative_to(package).parts[0] != "config"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"""\bspec\[["']""", line)]
    assert not found, "\n".join(found)
