"""End to end: run specs from a real config -> checkpoints on disk -> analyze() -> tables.

Nothing is trained: a tiny VGG (and a deep linear network) is built from its spec, saved as
checkpoints (one fresh, one after a single optimizer step on random gradients so that momentum
buffers exist), and every analysis runs on them. Settings come from the config schema's defaults,
so the test also pins the settings keys the workflow passes.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from bnstudy.analysis.run import analyze
from bnstudy.checkpoint import CheckpointError, checkpoint_path, save_checkpoint
from bnstudy.config import load_config, plan
from bnstudy.data import prepare
from bnstudy.models import build_model
from bnstudy.tables import ANALYSIS_TABLES as COLUMNS

ANALYSES = ("ics", "landscape", "curvature")


def make_config(results: str) -> dict:
    small = {"batch_size": 16, "steps": None}
    return load_config({
        "results": results,
        "datasets": {
            "tiny": {"source": "synthetic", "n_train": 48, "n_test": 12, "image_size": 32,
                     "classes": 3},
            "gauss": {"source": "gaussian", "n_train": 32, "n_test": 8, "dim": 4},
        },
        "setups": {
            "vgg": {"dataset": "tiny", "model": {"arch": "vgg", "depth": 11, "width": 0.0625},
                    "optim": {"steps": 5, "batch_size": 16, "momentum": 0.9,
                              "weight_decay": 5e-4}},
            "dln": {"dataset": "gauss", "model": {"arch": "dln", "depth": 5},
                    "optim": {"steps": 5, "batch_size": None}},
        },
        "studies": {
            "landscape": {"setup": "vgg", "variants": ["batchnorm", "noisy_batchnorm"],
                          "lrs": [0.1], "seeds": [0],
                          "ics": dict(small), "curvature": dict(small, power_iters=5),
                          "landscape": dict(small, points=3, random_directions=1)},
            "landscape_dln": {"setup": "dln", "variants": ["batchnorm"], "lrs": [1e-3],
                              "seeds": [0], "ics": {"batch_size": None},
                              "landscape": {"batch_size": None, "eta_min": 0.01, "eta_max": 30},
                              "curvature": {"batch_size": None}},
        },
    })


def write_run(spec: dict, config: dict, root) -> "Path":  # noqa: F821
    """Prepare the run's data and save checkpoints at steps 0 and 1, plus summary.json."""
    name = spec["dataset"]["name"]
    prepare(config["datasets"][name], name, spec["dataset"]["path"])
    run_dir = root / spec["run"]
    model = build_model(spec)
    o = spec["optim"]
    opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"],
                          weight_decay=o["weight_decay"])
    gen = torch.Generator().manual_seed(0)
    entries = []
    for step in (0, 1):
        if step:  # one optimizer step on random gradients: momentum buffers now exist
            for p in model.parameters():
                p.grad = 0.01 * torch.randn(p.shape, generator=gen)
            opt.step()
        path = checkpoint_path(run_dir, step)
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "step": step, "spec": spec})
        entries.append({"step": step, "path": str(path)})
    (run_dir / "summary.json").write_text(json.dumps({"run": spec["run"], "checkpoints": entries}))
    return run_dir


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    config = make_config(str(root / "results"))
    p = plan(config)
    runs = {spec["norm"]["variant"] + "-" + spec["model"]["arch"]: write_run(spec, config, root)
            for spec in p.runs.values()}
    return root, runs, p


def settings_for(p, arch: str, analysis: str) -> dict:
    study = "landscape" if arch == "vgg" else "landscape_dln"
    return dict(p.analysis_settings[p.study_analyses[study][analysis]])


@pytest.mark.parametrize("analysis", ANALYSES)
@pytest.mark.parametrize("run", ["batchnorm-vgg", "noisy_batchnorm-vgg", "batchnorm-dln"])
def test_analyze_writes_finite_tables(setting, analysis, run):
    root, runs, p = setting
    arch = run.split("-")[1]
    settings = settings_for(p, arch, analysis)
    out = analyze(settings, runs[run], root / "out" / analysis / f"{run}.csv")
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS[analysis]
    assert sorted(table["step"].unique()) == [0, 1]
    numeric = table.drop(columns=[c for c in ("direction",) if c in table])
    assert math.isfinite(numeric.to_numpy(dtype=float).sum()), table
    if analysis == "ics":  # rows per checkpoint: one per layer / probe point / one
        per_step = len(build_model(_spec(runs[run])).layer_groups())
    elif analysis == "landscape":
        per_step = settings["points"] * (1 + settings["random_directions"])
    else:
        per_step = 1
    assert len(table) == 2 * per_step
    if analysis == "ics":
        assert (table[table.layer == 1].l2_diff == 0).all()
        assert (table[table.layer > 1].l2_diff > 0).all()
    if analysis == "curvature":  # the power iteration says how far it got
        assert table["power_iters"].between(1, settings["power_iters"]).all()
        assert table["converged"].isin([True, False]).all()


def _spec(run_dir):
    return torch.load(run_dir / "checkpoints" / "step_0000000.pt", weights_only=False)["spec"]


def test_deterministic_and_noise_switch(setting):
    """Same inputs, same bytes; noise on gives other (but again reproducible) numbers."""
    root, runs, p = setting
    settings = settings_for(p, "vgg", "landscape")
    run = runs["noisy_batchnorm-vgg"]
    a = analyze(settings, run, root / "det" / "a.csv").read_bytes()
    b = analyze(settings, run, root / "det" / "b.csv").read_bytes()
    assert a == b
    noisy = dict(settings, noise=True)
    c = analyze(noisy, run, root / "det" / "c.csv").read_bytes()
    d = analyze(noisy, run, root / "det" / "d.csv").read_bytes()
    assert c == d and c != a


def test_steps_selection_and_listing_fallback(setting, tmp_path):
    """settings steps picks checkpoints (missing ones skipped); without summary.json the files on
    disk are listed."""
    root, runs, p = setting
    run = runs["batchnorm-dln"]
    settings = dict(settings_for(p, "dln", "curvature"), steps=[1, 99])
    table = pd.read_csv(analyze(settings, run, tmp_path / "c.csv"))
    assert table["step"].tolist() == [1]

    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    for step in (0, 1):
        src = checkpoint_path(run, step)
        (bare / "checkpoints" / src.name).write_bytes(src.read_bytes())
    table = pd.read_csv(analyze(settings_for(p, "dln", "curvature"), bare,
                                tmp_path / "bare.csv"))
    assert table["step"].tolist() == [0, 1]


def test_diverged_checkpoint_is_skipped(setting, tmp_path):
    root, runs, p = setting
    state = torch.load(checkpoint_path(runs["batchnorm-dln"], 1), weights_only=False)
    first = next(iter(k for k in state["model"] if k.endswith("weight")))
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    save_checkpoint(checkpoint_path(tmp_path, 7), state)
    out = analyze(settings_for(p, "dln", "ics"), tmp_path, tmp_path / "ics.csv")
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS["ics"] and len(table) == 0


def test_corrupt_checkpoint_names_the_file(setting, tmp_path):
    root, runs, p = setting
    path = checkpoint_path(tmp_path, 3)
    path.parent.mkdir(parents=True)
    path.write_bytes(checkpoint_path(runs["batchnorm-dln"], 1).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step_0000003.pt"):
        analyze(settings_for(p, "dln", "ics"), tmp_path, tmp_path / "ics.csv")
    assert not (tmp_path / "ics.csv").exists()


def test_analysis_dtype():
    """float64 for the deep linear network (its tiny steps are below float32 resolution),
    float32 otherwise, unless settings say otherwise."""
    from bnstudy.analysis.run import analysis_dtype

    assert analysis_dtype({"model": {"arch": "dln"}}, {}) == torch.float64
    assert analysis_dtype({"model": {"arch": "vgg"}}, {"dtype": None}) == torch.float32
    assert analysis_dtype({"model": {"arch": "dln"}}, {"dtype": "float32"}) == torch.float32
    with pytest.raises(ValueError):
        analysis_dtype({"model": {"arch": "vgg"}}, {"dtype": "half"})
