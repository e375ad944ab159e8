"""`optim.train_only` and the `bn_only_trains` claim (Frankle, Schwab & Morcos 2021, "Training
BatchNorm and Only BatchNorm"): bn_affine trains the normalisers' gamma and beta and nothing else,
random_matched as many other scalars drawn from the run's seed, all (the default) everything with
the run ids and numbers of before; the claim on constructed tables; the shipped studies.

The training checks use a VGG-11 at width 1/16 on 32x32 synthetic images for three steps, with
momentum and weight decay on: a frozen entry must stay bit for bit at its initial value through
both (a mask on the gradient alone would let weight decay move it).
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, assert_default_key_trains_as_absent
from synthetic_tables import Outcome, make_tables
from test_config import fake_imagefolder

from bnstudy.train.checkpoint import checkpoint_path
from bnstudy.claims import INCONCLUSIVE, NOT_SUPPORTED, REPORTED, SUPPORTED, ClaimRules
from bnstudy.claims.table import claims
from bnstudy.configure import load_config
from bnstudy.data.datasets import prepare
from bnstudy.errors import ConfigError
from bnstudy.models.networks import affine_parameters, build_model, training_masks
from bnstudy.config.plan import plan
from bnstudy.train.sgd import SGD
from bnstudy.config.spec import RunSpec, has_affine
from bnstudy.train.loop import train
from bnstudy.config.variants import VARIANTS

MODES = ["all", "bn_affine", "random_matched"]
STEPS = 3


def quiet(msg):
    pass


def make_config(results, optim: dict | None = None, variants=("batchnorm",), bias: bool = True,
                grid: dict | None = None, **study) -> dict:
    """One tiny VGG study (momentum and weight decay on), `optim` merged into the setup's optim."""
    return load_config({
        "results": str(results),
        "tracking": {"enabled": False},
        "runtime": {"threads": 1},
        "datasets": {"tiny": {"source": "synthetic", "n_train": 64, "n_test": 32}},
        "setups": {"vgg": {"dataset": "tiny",
                           "model": {"arch": "vgg", "depth": 11, "width": 0.0625, "bias": bias},
                           "optim": {"steps": STEPS, "batch_size": 16, "momentum": 0.9, "weight_decay": 5e-4,
                                     **(optim or {})},
                           "checkpoints": {"dense_until": STEPS, "dense_every": 1, "every": STEPS},
                           "log": {"eval_every": STEPS, "layers_every": 1, "eval_samples": 32, "units": 2}}},
        "studies": {"x": {"setup": "vgg", "variants": list(variants), "lrs": [0.5], "seeds": [0],
                          "grid": grid or {}, **study}},
    })


def specs(config: dict) -> list[RunSpec]:
    out = list(plan(config).runs.values())
    for spec in out:
        prepare(config["datasets"][spec.dataset.name], spec.dataset.name, spec.dataset.path)
    return out


def trained(spec: RunSpec, run_dir) -> tuple[dict, dict]:
    """(initial, final) parameters of `spec` trained for STEPS steps into `run_dir`."""
    initial = {n: p.detach().clone() for n, p in build_model(spec).named_parameters()}
    summary = train(spec, run_dir, log=quiet)
    assert summary["status"] == "completed"
    final = torch.load(checkpoint_path(run_dir, STEPS), weights_only=False)["model"]
    return initial, {n: final[n] for n in initial}


def affine_names(spec: RunSpec) -> set[str]:
    model = build_model(spec)
    ids = {id(p) for p in affine_parameters(model)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


# ---------------------------------------------------------------------------------------------
# training


def test_bn_affine_changes_gamma_and_beta_and_nothing_else(tmp_path):
    """Every conv weight and bias and the output layer bit for bit at initialisation after three
    steps with momentum and weight decay; every gamma and beta moved."""
    (spec,) = specs(make_config(tmp_path, {"train_only": "bn_affine"}))
    assert spec.optim.train_only == "bn_affine" and spec.to_dict()["optim"]["train_only"] == "bn_affine"
    initial, final = trained(spec, tmp_path / "run")
    affine = affine_names(spec)
    assert affine and all(".norm." in n for n in affine) and any("output" in n for n in initial)
    assert len(affine) == 2 * len(build_model(spec).blocks)  # a weight and a bias per BatchNorm
    for name in initial:
        if name in affine:
            assert not torch.equal(initial[name], final[name]), name
        else:
            assert torch.equal(initial[name], final[name]), name


def test_random_matched_trains_as_many_other_scalars_and_freezes_gamma_and_beta(tmp_path):
    """The mask holds exactly as many scalars as the network has gamma and beta entries, none of
    them in a normaliser; training changes exactly those scalars (no biases here: a conv bias in
    front of BatchNorm has a gradient of ~0 and could stay put by chance) and leaves gamma and beta
    at their initial values."""
    (spec,) = specs(make_config(tmp_path, {"train_only": "random_matched"}, bias=False))
    model = build_model(spec)
    masks = training_masks(model, spec)
    affine = affine_names(spec)
    n_affine = sum(p.numel() for p in affine_parameters(model))
    names = [n for n, _ in model.named_parameters()]
    chosen = {n: m for n, m in zip(names, masks) if isinstance(m, torch.Tensor)}
    assert all(masks[i] is False for i, n in enumerate(names) if n in affine)
    assert set(chosen) == set(names) - affine  # every other parameter may get some
    assert sum(int(m.sum()) for m in chosen.values()) == n_affine == 2 * 172  # channels 4..32
    initial, final = trained(spec, tmp_path / "run")
    changed = 0
    for name in initial:
        moved = initial[name] != final[name]
        if name in affine:
            assert not moved.any(), name
        else:
            assert not (moved & ~chosen[name]).any(), name  # nothing outside the mask moved
            changed += int(moved.sum())
    assert changed == n_affine


def test_the_random_mask_is_a_pure_function_of_the_seed(tmp_path):
    """Same seed, same scalars (a fresh model, a resumed run); another seed, others; the global RNG
    is neither read nor moved."""
    config = make_config(tmp_path, {"train_only": "random_matched"})
    (spec,) = specs(config)
    state = torch.get_rng_state()
    first = training_masks(build_model(spec), spec)
    torch.manual_seed(12345)  # the global RNG does not enter
    again = training_masks(build_model(spec), spec)
    torch.set_rng_state(state)
    other = training_masks(build_model(spec), spec.updated({"seed": 1}))
    tensors = [(a, b, c) for a, b, c in zip(first, again, other) if isinstance(a, torch.Tensor)]
    assert tensors and all(torch.equal(a, b) for a, b, _ in tensors)
    assert not all(torch.equal(a, c) for a, _, c in tensors)
    state = torch.get_rng_state()
    training_masks(build_model(spec), spec)
    assert torch.equal(state, torch.get_rng_state())


def test_a_masked_update_is_the_plain_update_where_the_mask_allows_and_nothing_elsewhere():
    """SGD with momentum and weight decay: masked entries keep their values exactly (their momentum
    buffer stays 0), the others take torch's SGD update bit for bit; False freezes a parameter,
    and all-None masks are the unmasked optimizer."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen), torch.randn(2, generator=gen)]
    mask = torch.rand(3, 4, generator=gen) < 0.3
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(3)]

    def run(masks, reference=False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01) if reference else \
            SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, masks=masks)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in params], opt

    plain, _ = run(None, reference=True)
    nones, _ = run([None, None, None])
    masked, opt = run([mask, None, False])
    assert all(torch.equal(a, b) for a, b in zip(plain, nones))
    assert torch.equal(masked[0], torch.where(mask, plain[0], start[0]))
    assert torch.equal(masked[1], plain[1]) and torch.equal(masked[2], start[2])
    assert torch.equal(opt.buffers[0] == 0, ~mask) and opt.buffers[2] is None


# ---------------------------------------------------------------------------------------------
# the default: ids and numbers of before


def test_all_is_the_default_and_keeps_run_ids_and_training_numbers(tmp_path):
    """Runs planned before optim.train_only existed keep their ids and their spec JSON holds no
    train_only key; a spec that says all explicitly trains to the very numbers of one that lacks
    it, and the optimizer gets no masks."""
    (absent,) = specs(make_config(tmp_path / "a"))
    (explicit,) = specs(make_config(tmp_path / "a", {"train_only": "all"}))
    assert explicit.run == absent.run and explicit.to_dict() == absent.to_dict()
    assert "train_only" not in absent.to_dict()["optim"] and absent.optim.train_only == "all"
    assert training_masks(build_model(absent), absent) is None

    # what a checkpoint of an earlier version holds (no train_only) trains as the key at its default
    assert_default_key_trains_as_absent(absent, "optim", "train_only", "all", tmp_path)
    # a grid over the key: the "all" point is the run without it; the others are runs of their own
    grid = specs(make_config(tmp_path / "a", grid={"optim.train_only": MODES}))
    assert sorted(s.optim.train_only for s in grid) == sorted(MODES)
    assert absent.run in {s.run for s in grid} and len({s.run for s in grid}) == 3


# ---------------------------------------------------------------------------------------------
# config errors


@pytest.mark.parametrize("variant", ["standard", "weightnorm", "standard_noise"])
@pytest.mark.parametrize("mode", ["bn_affine", "random_matched"])
def test_freezing_needs_affine_normaliser_parameters(tmp_path, variant, mode):
    config = make_config(tmp_path, variants=(variant,), grid={"optim.train_only": ["all", mode]})
    with pytest.raises(ConfigError, match=r"config key optim\.train_only: '\w+' is not allowed") as err:
        plan(config)
    assert variant in str(err.value) and "no normaliser affine parameters" in str(err.value)


def test_an_unknown_mode_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"setups\.vgg\.optim\.train_only") as err:
        make_config(tmp_path, {"train_only": "gamma"})
    assert "bn_affine" in str(err.value) and "random_matched" in str(err.value)


def test_has_affine_is_what_the_models_hold():
    """spec.has_affine (torch-free: the config check) agrees with the built networks."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    base = next(s for s in plan(load_config(config)).runs.values() if s.model.arch == "vgg")
    for variant in VARIANTS:
        spec = base.updated({"norm.variant": variant})
        assert bool(affine_parameters(build_model(spec))) == has_affine(variant), variant


# ---------------------------------------------------------------------------------------------
# the claim on constructed tables

STUDY = {"setup": "vgg", "variants": ["batchnorm"], "lrs": [0.1, 2.0], "seeds": [0, 1, 2],
         "grid": {"optim.train_only": MODES}, "overrides": {}, "enabled": True, "description": "",
         "figures": ["test_accuracy"], "claims": ["bn_only_trains"], "layers": []}
FAST = ClaimRules(min_steps=100)  # the fixtures train for 200 steps


def bn_only_rows(tmp_path, outcome, study=None) -> pd.DataFrame:
    cfg = copy.deepcopy(study or STUDY)
    tables = make_tables(tmp_path, "bn_only", cfg, outcome=outcome)
    table = claims({"bn_only": cfg}, {"bn_only": tables["runs"].parent}, tmp_path / "claims.csv",
                   tmp_path / "claims.md", FAST)
    return table.set_index("key")


def accuracies(levels: dict, jitter: dict | None = None):
    """Outcome per (mode, lr): test accuracy levels[mode][lr] + 0.01 x seed (+ jitter[mode][seed],
    so that paired differences are not all equal: a zero-width interval is decided by the exact
    test, which 3 seeds cannot pass); full training's train accuracy 0.9 (BN trains)."""
    def outcome(variant, lr, seed, grid):
        mode = grid["optim.train_only"]
        test = levels[mode][lr] + 0.01 * seed + (jitter or {}).get(mode, {}).get(seed, 0.0)
        return Outcome(train_accuracy=0.9 if mode == "all" else test, test_accuracy=test)
    return outcome


def test_bn_only_far_above_chance_and_above_the_random_control_is_supported(tmp_path):
    """BN-only's best lr is 2.0 (0.40 + seed/100), the control's 2.0 too (0.20 + seed/100 +
    jitter), full training's 0.1 (0.80): each at its own best rate."""
    levels = {"all": {0.1: 0.80, 2.0: 0.20}, "bn_affine": {0.1: 0.15, 2.0: 0.40},
              "random_matched": {0.1: 0.12, 2.0: 0.20}}
    rows = bn_only_rows(tmp_path, accuracies(levels, {"random_matched": {1: 0.005}}))
    bn = rows.loc["bn_only_trains.bn_only.final"]
    assert bn["verdict"] == SUPPORTED and bn["effect"] == pytest.approx(0.41, abs=1e-9)
    assert bn["test"] == "t interval" and bn["n_seeds"] == 3 and "above 0.15" in bn["rule"]
    assert bn["source"] == "Frankle 2021" and bn["agreement"] == "agrees with Frankle 2021"
    versus = rows.loc["bn_only_trains.vs_random.final"]
    assert versus["verdict"] == SUPPORTED and versus["effect"] == pytest.approx(0.2 - 0.005 / 3, abs=1e-9)
    full = rows.loc["bn_only_trains.full.final"]
    assert full["verdict"] == REPORTED and full["effect"] == pytest.approx(0.81, abs=1e-9)


def test_bn_only_at_chance_and_below_the_control_is_not_supported(tmp_path):
    levels = {"all": {0.1: 0.80, 2.0: 0.20}, "bn_affine": {0.1: 0.10, 2.0: 0.11},
              "random_matched": {0.1: 0.25, 2.0: 0.30}}
    rows = bn_only_rows(tmp_path, accuracies(levels, {"random_matched": {2: 0.006}}))
    bn = rows.loc["bn_only_trains.bn_only.final"]
    assert bn["verdict"] == NOT_SUPPORTED and bn["effect"] == pytest.approx(0.12, abs=1e-9)
    assert bn["agreement"] == "disagrees with Frankle 2021"
    versus = rows.loc["bn_only_trains.vs_random.final"]
    assert versus["verdict"] == NOT_SUPPORTED and versus["effect"] == pytest.approx(-0.19 - 0.002, abs=1e-9)


def test_the_study_figure_draws_the_three_kinds_of_training_as_lines_in_one_panel_per_lr(tmp_path):
    """test_accuracy_by_train_only (the shipped studies' figure): a panel per lr, in each one line
    per kind of training, in its own colour, at its own level: Frankle et al.'s comparison (BN-only
    above the control) is read within a panel, not across panels."""
    from bnstudy.figures import draw as figures
    from bnstudy.config.catalog import figure_tables

    kind = "test_accuracy_by_train_only"
    levels = {"all": {0.1: 0.8, 2.0: 0.2}, "bn_affine": {0.1: 0.15, 2.0: 0.4}, "random_matched": {0.1: 0.12, 2.0: 0.2}}
    study = {**copy.deepcopy(STUDY), "figures": [kind]}
    tables = make_tables(tmp_path, "bn_only", copy.deepcopy(study), outcome=accuracies(levels))
    given = {name: tables[name] for name in figure_tables(kind)}
    data = figures.figure_data(kind, "bn_only", study, given)
    means = data[data["style"] == "mean"]
    assert sorted(means["column"].unique()) == ["lr = 0.1", "lr = 2"]
    for column, lr in (("lr = 0.1", 0.1), ("lr = 2", 2.0)):
        panel = means[means["column"] == column]
        assert sorted(panel["variant"].unique()) == sorted(f"batchnorm · train_only = {m}" for m in MODES)
        last = panel[panel["step"] == panel["step"].max()].set_index("variant")["y"]
        for mode in MODES:  # each line ends at its own level (the fixture's curve and seed offsets: +-0.02)
            assert last[f"batchnorm · train_only = {mode}"] == pytest.approx(levels[mode][lr], abs=0.02)
        assert last["batchnorm · train_only = bn_affine"] > last["batchnorm · train_only = random_matched"]
    fig = figures.render(kind, "bn_only", study, given)
    try:
        fig.canvas.draw()
        drawn = [ax for ax in fig.axes if ax.lines]
        colours = {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
                   for ax in drawn for line in ax.lines}
    finally:
        figures.plt.close(fig)
    assert len(drawn) == 2 and len(colours) >= 3


def test_missing_control_runs_make_the_rows_inconclusive(tmp_path):
    """Tables without random_matched runs (a study edited after the config check): inconclusive,
    with the reason."""
    study = {**STUDY, "grid": {"optim.train_only": ["all", "bn_affine"]}}
    levels = {"all": {0.1: 0.8, 2.0: 0.2}, "bn_affine": {0.1: 0.15, 2.0: 0.4}}
    rows = bn_only_rows(tmp_path, accuracies(levels), study)
    assert (rows["verdict"] == INCONCLUSIVE).all()
    assert rows["reason"].str.contains("random_matched").all()


def test_a_study_without_the_modes_is_refused(tmp_path):
    """The design check names the claim and the grid it needs; seeds a t interval cannot use are
    refused too."""
    with pytest.raises(ConfigError, match=r"studies\.x\.claims\.0: 'bn_only_trains'.*optim\.train_only"):
        make_config(tmp_path, seeds=[0, 1, 2], claims=["bn_only_trains"])
    with pytest.raises(ConfigError, match=r"missing \['random_matched'\]"):
        make_config(tmp_path, seeds=[0, 1, 2], claims=["bn_only_trains"],
                    grid={"optim.train_only": ["all", "bn_affine"]})
    with pytest.raises(ConfigError, match=r"2 seeds cannot decide claim bn_only_trains, row bn_only"):
        make_config(tmp_path, seeds=[0, 1], claims=["bn_only_trains"], grid={"optim.train_only": MODES})
    make_config(tmp_path, seeds=[0, 1, 2], claims=["bn_only_trains"], grid={"optim.train_only": MODES})


# ---------------------------------------------------------------------------------------------
# the shipped configs


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10-cpu-lr.yaml"])
def test_the_shipped_bn_only_studies_load_and_share_their_full_training_runs(name, tmp_path):
    """Each config's bn_only study loads with the three modes, enough seeds for its t intervals and
    a larger rate beside the full network's; its full-training runs are runs another study trains
    anyway (the default leaves their ids alone)."""
    cfg = yaml.safe_load((REPO / "config" / name).read_text())
    for dataset in cfg["datasets"].values():
        if dataset["source"] == "imagefolder":
            dataset["root"] = str(fake_imagefolder(tmp_path / "images", per_class=100))
    config = load_config(cfg)
    study = config["studies"]["bn_only"]
    assert study["grid"] == {"optim.train_only": MODES} and study["claims"] == ["bn_only_trains"]
    assert study["variants"] == ["batchnorm"] and len(study["seeds"]) >= 3 and len(study["lrs"]) == 2
    p = plan(config)
    mine = [p.runs[r] for r in p.study_runs["bn_only"]]
    assert len(mine) == 3 * 2 * len(study["seeds"])
    full = {s.run for s in mine if s.optim.train_only == "all"}
    others = {r for other, runs in p.study_runs.items() if other != "bn_only" for r in runs}
    assert full and full & others
    assert all("train_only" not in p.runs[r].to_dict()["optim"] for r in full)
