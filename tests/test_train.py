"""Training: determinism, exact resume after a kill, corrupt checkpoints, divergence, learnability."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from bnstudy.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from bnstudy.train.loop import train

from helpers import REPO, changed, prepared_spec


def quiet(msg):
    pass


def tables(run_dir):
    return {name: pd.read_csv(run_dir / f"{name}.csv") for name in ("train", "eval", "layers", "units")}


def test_same_seed_same_numbers_and_outputs(tmp_path):
    spec = prepared_spec(tmp_path, "vgg-noisy_batchnorm")
    a = train(spec, tmp_path / "a", log=quiet)
    b = train(spec, tmp_path / "b", log=quiet)
    ta, tb = tables(tmp_path / "a"), tables(tmp_path / "b")
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name])
    assert a["final"] == b["final"] and a["status"] == "completed"
    other = train(changed(spec, {"seed": 7}), tmp_path / "c", log=quiet)
    assert other["final"] != a["final"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert tuple(c["step"] for c in summary["checkpoints"]) == spec.checkpoints
    layers, units = ta["layers"], ta["units"]
    assert set(layers["layer"]) == set(range(1, 9))
    assert (units["p15"] <= units["p50"]).all() and (units["p50"] <= units["p85"]).all()
    assert units.groupby(["step", "layer"])["unit"].nunique().eq(spec.log.units).all()
    assert layers["weight_grad_norm"].gt(0).all() and layers["output_grad_norm"].gt(0).all()
    assert layers["unit_mean_change"].gt(0).all()


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    """Kill a real training process mid-run (SIGKILL, no cleanup), restart it: same metrics as
    an uninterrupted run. Dropout and noise included, so every RNG stream is exercised."""
    spec = prepared_spec(tmp_path, "vgg-noisy_batchnorm", steps=40)
    # checkpoints right after recording steps (layers_every 3: steps 9, 18, ...): the per-unit
    # moments of step t, needed at step t + 1 for Fig. 8's changes, cross the checkpoint
    spec = changed(spec, {"model.dropout": 0.2, "checkpoints": [0, 10, 19, 28, 40], "log.layers_every": 3,
                          "log.train_every": 4, "log.eval_every": 7, "augment.crop": 2, "augment.flip": True})
    reference = train(spec, tmp_path / "ref", log=quiet)

    run_dir = tmp_path / "killed"
    script = (f"import sys; sys.path.insert(0, {str(REPO / 'src')!r});"
              f"from bnstudy.config.spec import RunSpec; from bnstudy.train.loop import train; "
              f"train(RunSpec.from_json(sys.argv[1]), sys.argv[2], log=lambda m: print(m, flush=True))")
    proc = subprocess.Popen([sys.executable, "-c", script, spec.to_json(), str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    import time
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(run_dir)) < 3:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before_kill = [s for s, _ in list_checkpoints(run_dir)]
    assert 19 <= max(done_before_kill) < 40 and not (run_dir / "summary.json").exists()

    resumed = train(spec, run_dir, log=quiet)
    assert resumed["final"] == reference["final"]
    for name, frame in tables(tmp_path / "ref").items():
        pd.testing.assert_frame_equal(frame, tables(run_dir)[name])


def test_corrupt_checkpoint_is_named_and_resume_falls_back(tmp_path):
    spec = prepared_spec(tmp_path, "vgg-batchnorm")
    reference = train(spec, tmp_path / "ref", log=quiet)
    run_dir = tmp_path / "run"
    train(spec, run_dir, log=quiet)
    last = list_checkpoints(run_dir)[-1][1]
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=last.name):
        load_checkpoint(last)
    messages = []
    resumed = train(spec, run_dir, log=messages.append)
    assert any(last.name in m and "falling back" in m for m in messages)
    assert resumed["final"] == reference["final"]


def test_divergence_is_a_result(tmp_path):
    spec = prepared_spec(tmp_path, "vgg-standard", lr=1e4)
    summary = train(spec, tmp_path / "run", log=quiet)
    assert summary["status"] == "diverged" and summary["diverged_step"] is not None
    assert all(v is None for v in summary["final"].values())
    train_table = pd.read_csv(tmp_path / "run" / "train.csv")
    assert not math.isfinite(train_table["loss"].iloc[-1])
    assert (tmp_path / "run" / "layers.csv").exists()


@pytest.mark.parametrize("lr", [0.05, 1e4])
def test_deferred_loss_readback_changes_nothing(tmp_path, monkeypatch, lr):
    """On a GPU losses are read back every 32 steps (train.READBACK_EVERY); forced here on the
    CPU, a normal and a diverging run give the same tables, steps and checkpoints as reading
    back every step."""
    spec = prepared_spec(tmp_path, "vgg-standard", lr=lr)
    every_step = train(spec, tmp_path / "a", log=quiet)
    monkeypatch.setitem(train.__globals__["READBACK_EVERY"], "cpu", 32)
    deferred = train(spec, tmp_path / "b", log=quiet)
    for key in ("status", "diverged_step", "final", "steps_done"):
        assert deferred[key] == every_step[key]
    ta, tb = tables(tmp_path / "a"), tables(tmp_path / "b")
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name])
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [s for s, _ in list_checkpoints(tmp_path / "a")]
    if lr > 1:
        assert every_step["status"] == "diverged"


def test_the_synthetic_data_is_learnable(tmp_path):
    """At demo scale a small BN VGG must land well between chance and 100%."""
    spec = changed(prepared_spec(tmp_path, "vgg-batchnorm", steps=120, batch_size=64), {"log.eval_every": 60})
    summary = train(spec, tmp_path / "run", log=quiet)
    assert 0.3 < summary["final"]["test_accuracy"] <= 1.0


def test_checkpoint_holds_everything_to_resume(tmp_path):
    spec = prepared_spec(tmp_path, "vgg-batchnorm")
    train(spec, tmp_path / "run", log=quiet)
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[1][1])
    assert {"model", "optimizer", "step", "spec", "rng", "metrics"} <= set(state)
    assert state["spec"] == spec.to_dict() and state["step"] == spec.checkpoints[1]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))  # no temporary files left


def unit_moment_change(tmp_path, variant: str) -> float:
    spec = changed(prepared_spec(tmp_path, f"vgg-{variant}", steps=12), {"log.layers_every": 4})
    train(spec, tmp_path / variant, log=quiet)
    return pd.read_csv(tmp_path / variant / "layers.csv")["unit_mean_change"].mean()


def test_noisy_batchnorm_units_move_at_least_10x_more_than_batchnorm_units(tmp_path):
    """Fig. 8: Algorithm 1 draws a new mean shift per unit every step, so a unit's mean moves far
    more between steps t and t+1 than under BatchNorm (whose per-unit mean is beta). Pooled over
    a layer's units the noise would average away; per unit it must not."""
    noisy, plain = unit_moment_change(tmp_path, "noisy_batchnorm"), unit_moment_change(tmp_path, "batchnorm")
    assert noisy >= 10 * plain, (noisy, plain)


def test_training_mode_accuracy_is_the_mean_over_the_batches_trained_on(tmp_path):
    """eval.csv's train_batches rows: training mode (noise on), the mean over the batches since the
    previous evaluation, i.e. the mean of train.csv's per-batch rows over that window."""
    spec = changed(prepared_spec(tmp_path, "vgg-noisy_batchnorm", steps=12),
                   {"log.train_every": 1, "log.eval_every": 6})
    summary = train(spec, tmp_path / "run", log=quiet)
    per_batch, evals = pd.read_csv(tmp_path / "run" / "train.csv"), pd.read_csv(tmp_path / "run" / "eval.csv")
    window = evals[evals["split"] == "train_batches"].set_index("step")["accuracy"]
    assert list(window.index) == [6, 12]
    assert window[6] == pytest.approx(per_batch[per_batch["step"] < 6]["accuracy"].mean())
    assert window[12] == pytest.approx(per_batch[per_batch["step"] >= 6]["accuracy"].mean())
    assert summary["final"]["train_batches_accuracy"] == pytest.approx(window[12])
    assert set(evals["split"]) == {"train", "test", "train_batches"}


def test_train_rows_are_window_means(tmp_path):
    spec = prepared_spec(tmp_path, "vgg-batchnorm", steps=12)
    every = train(spec, tmp_path / "a", log=quiet)
    spec4 = changed(spec, {"log.train_every": 4})
    train(spec4, tmp_path / "b", log=quiet)
    a, b = pd.read_csv(tmp_path / "a" / "train.csv"), pd.read_csv(tmp_path / "b" / "train.csv")
    assert list(b["step"]) == [3, 7, 11]
    assert b["loss"].tolist() == pytest.approx([a["loss"][i:i + 4].mean() for i in (0, 4, 8)])
    assert every["status"] == "completed"


@pytest.mark.parametrize("lr", [1e-6, 1e-7])
def test_deep_linear_network_trains_at_the_papers_learning_rates(tmp_path, lr):
    """The paper's objective ||W X - A X||^2 is summed over the samples: at lr 1e-6 and 1e-7 both
    the standard and the BatchNorm DLN lower their loss visibly (a mean over the samples divides
    the gradient by their number and the network hardly moves)."""
    from helpers import smoke_config

    cfg = smoke_config(tmp_path)
    cfg["datasets"]["linear"].update(n_train=1000, n_test=1000)  # the paper's 1000 samples
    for variant in ("standard", "batchnorm"):
        spec = prepared_spec(tmp_path, f"dln-{variant}", config=cfg, steps=200, lr=lr)
        assert spec.optim.loss_reduction == "sum"
        train(spec, tmp_path / f"{variant}", log=quiet)
        loss = pd.read_csv(tmp_path / f"{variant}" / "train.csv")["loss"]
        assert loss.iloc[-1] < 0.9 * loss.iloc[0], (variant, lr, loss.iloc[0], loss.iloc[-1])


def test_precision_is_part_of_the_run_and_resume_refuses_another(tmp_path):
    from bnstudy.configure import load_config
    from bnstudy.config.plan import plan

    from helpers import smoke_config

    ids = {}
    for precision in ("fp32", "tf32"):
        cfg = smoke_config(tmp_path)
        cfg["runtime"]["precision"] = precision
        ids[precision] = set(plan(load_config(cfg)).runs)
    assert not ids["fp32"] & ids["tf32"]

    spec = prepared_spec(tmp_path, "vgg-batchnorm")
    train(spec, tmp_path / "run", log=quiet)
    (tmp_path / "run" / "summary.json").unlink()
    other = changed(spec, {"runtime.precision": "bf16"})
    with pytest.raises(RuntimeError, match="precision=fp32.*bf16"):
        train(other, tmp_path / "run", log=quiet)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.0, 1e-3)])
def test_plain_sgd_is_torch_sgd_bit_for_bit(momentum, weight_decay):
    """bnstudy.train.sgd.SGD avoids torch.optim's start-up cost, not its arithmetic: same parameters,
    same momentum buffers, same state dict, and each loads the other's state."""
    from bnstudy.train.sgd import SGD

    gen = torch.Generator().manual_seed(0)
    make = lambda: [torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(),  # noqa: E731
                    torch.randn(3, generator=torch.Generator().manual_seed(2)).requires_grad_()]
    ours, theirs = make(), make()
    opt_ours = SGD(ours, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    opt_theirs = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 2:  # a parameter without a gradient is skipped, as torch does
            ours[1].grad = theirs[1].grad = None
        opt_ours.step()
        opt_theirs.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
    a, b = opt_ours.state_dict(), opt_theirs.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"])
    assert {k: v for k, v in a["param_groups"][0].items() if k in b["param_groups"][0]} == \
        {k: b["param_groups"][0][k] for k in a["param_groups"][0]}
    fresh = SGD(make(), lr=1.0)
    fresh.load_state_dict(b)
    assert fresh.lr == 0.1 and fresh.momentum == momentum
    torch.optim.SGD(make(), lr=1.0).load_state_dict(a)  # and the other way round


def test_compiled_step_trains_like_the_eager_one(tmp_path):
    """runtime.compile: on (the GPU path's torch.compile, here with inductor on the CPU) gives the
    eager run's numbers up to kernel rounding, is a different run id, and noisy variants stay eager."""
    from helpers import smoke_config
    from bnstudy.configure import load_config
    from bnstudy.config.plan import plan

    cfg = smoke_config(tmp_path)
    cfg["runtime"]["compile"] = "on"
    compiled_ids = set(plan(load_config(cfg)).runs)
    eager = prepared_spec(tmp_path, "mlp-batchnorm", steps=8)
    assert eager.run not in compiled_ids
    spec = changed(eager, {"runtime.compile": "on"})
    a = train(eager, tmp_path / "eager", log=quiet)
    b = train(spec, tmp_path / "compiled", log=quiet)
    ta, tb = tables(tmp_path / "eager"), tables(tmp_path / "compiled")
    assert b["status"] == "completed"
    assert tb["train"]["loss"].to_numpy() == pytest.approx(ta["train"]["loss"].to_numpy(), rel=1e-4)
    assert b["final"]["test_accuracy"] == pytest.approx(a["final"]["test_accuracy"], abs=0.02)
    messages = []
    noisy = prepared_spec(tmp_path, "vgg-noisy_batchnorm", steps=2)
    train(changed(noisy, {"runtime.compile": "on"}), tmp_path / "noisy", log=messages.append)
    assert any("training eagerly" in m for m in messages)


@pytest.mark.parametrize("variant, arch", [("layernorm", "vgg"), ("groupnorm", "vgg"), ("instancenorm", "vgg"),
                                           ("weightnorm", "vgg"), ("noisy_groupnorm", "vgg"),
                                           ("batchnorm", "resnet"), ("groupnorm", "resnet")])
def test_every_normaliser_trains_and_resumes_bit_identically(tmp_path, variant, arch):
    """Each new variant (and the ResNet) lowers its loss on the smoke data, and a run resumed from
    a checkpoint ends with exactly the tables of an uninterrupted one."""
    base = prepared_spec(tmp_path, "vgg-batchnorm", steps=12)
    changes = {"norm.variant": variant, "checkpoints": [0, 4, 8, 12]}
    if arch == "resnet":
        changes.update({"model.arch": "resnet", "model.depth": 8, "model.width": 0.5})
    spec = changed(base, changes)
    reference = train(spec, tmp_path / "ref", log=quiet)
    losses = pd.read_csv(tmp_path / "ref" / "train.csv")["loss"]
    assert reference["status"] == "completed" and losses.iloc[-4:].mean() < losses.iloc[:4].mean(), losses.tolist()
    run_dir = tmp_path / "resumed"
    train(spec, run_dir, log=quiet)
    # as if killed after step 8's checkpoint: what came later never happened
    for later in ("summary.json", "train.csv", "eval.csv", "layers.csv", "units.csv", "spec.json",
                  "checkpoints/step_0000012.pt"):
        (run_dir / later).unlink()
    messages = []
    resumed = train(spec, run_dir, log=messages.append)
    assert any("from step 8" in m for m in messages), messages
    assert resumed["final"] == reference["final"]
    for name, frame in tables(tmp_path / "ref").items():
        pd.testing.assert_frame_equal(frame, tables(run_dir)[name])


def test_batchnorm_weights_are_scale_invariant_and_their_norm_grows_as_predicted(tmp_path):
    """Arora, Li & Lyu 2019: every filter before BatchNorm has |cos(w, g)| < 1e-4, and under plain
    SGD ||w_t+1||^2 = ||w_t||^2 + lr^2 ||g_t||^2 to 1e-4 (every step recorded)."""
    spec = changed(prepared_spec(tmp_path, "vgg-batchnorm", steps=12), {"log.layers_every": 1})
    train(spec, tmp_path / "run", log=quiet)
    layers = pd.read_csv(tmp_path / "run" / "layers.csv").sort_values(["layer", "step"])
    assert layers["weight_grad_cos"].max() < 1e-4
    # what of the cosine BN's eps explains: w . g = eps/(v + eps) gamma dL/dgamma, to float32 rounding
    assert (layers["weight_grad_cos_p50"] <= layers["weight_grad_cos"]).all()
    assert layers["unexplained_cos"].max() < 1e-5 and layers["unexplained_cos"].max() < layers["weight_grad_cos"].max() / 5
    for _, rows in layers.groupby("layer"):
        w_sq = rows["weight_norm"].to_numpy() ** 2
        grown = w_sq[:-1] + spec.optim.lr ** 2 * rows["weight_grad_norm"].to_numpy()[:-1] ** 2
        assert abs(grown / w_sq[1:] - 1).max() < 1e-4
    standard = changed(spec, {"norm.variant": "standard"})
    train(standard, tmp_path / "standard", log=quiet)
    plain = pd.read_csv(tmp_path / "standard" / "layers.csv")
    assert plain["weight_grad_cos"].max() > 1e-2 and plain["unexplained_cos"].isna().all()  # not invariant
