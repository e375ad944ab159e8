"""End to end: run specs from a real config -> checkpoints on disk -> the analysis job -> tables.

Nothing is trained: a tiny VGG (and a deep linear network) is built from its spec, saved as
checkpoints (one fresh, one after a single optimizer step on random gradients so that momentum
buffers exist), and every analysis runs on them. Settings come from the config schema's defaults,
so the test also pins the settings keys the workflow passes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bnstudy.analysis.run import AnalysisJob, analysis_dtype, analyze
from bnstudy.train.checkpoint import CheckpointError, checkpoint_path, save_checkpoint
from bnstudy.configure import load_config
from bnstudy.data.datasets import prepare
from bnstudy.models.networks import build_model
from bnstudy.config.plan import plan
from bnstudy.config.spec import RunSpec
from bnstudy.files import ANALYSIS_TABLES as COLUMNS

ANALYSES = ("ics", "landscape", "curvature")


def analyze_one(settings: dict, run_dir, out):
    """One table through the analysis job: `out` is where the test wants it."""
    job = AnalysisJob(settings["analysis"], "test", settings)
    (table,) = analyze([job], run_dir, out.parent / f"{out.stem}-job")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.replace(out)
    return out


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
                          "ics": dict(small), "curvature": dict(small, max_products=150),
                          "landscape": dict(small, points=3, random_directions=1)},
            "landscape_dln": {"setup": "dln", "variants": ["batchnorm"], "lrs": [1e-3],
                              "seeds": [0], "ics": {"batch_size": None},
                              "landscape": {"batch_size": None, "eta_min": 0.01, "eta_max": 30},
                              "curvature": {"batch_size": None}},
        },
    })


def write_run(spec: RunSpec, config: dict, root: Path) -> Path:
    """Prepare the run's data and save checkpoints at steps 0 and 1, plus summary.json."""
    name = spec.dataset.name
    prepare(config["datasets"][name], name, spec.dataset.path)
    run_dir = root / spec.run
    model = build_model(spec)
    o = spec.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(0)
    entries = []
    for step in (0, 1):
        if step:  # one optimizer step on random gradients: momentum buffers now exist
            for p in model.parameters():
                p.grad = 0.01 * torch.randn(p.shape, generator=gen)
            opt.step()
        path = checkpoint_path(run_dir, step)
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "step": step, "spec": spec.to_dict()})
        entries.append({"step": step, "path": str(path)})
    (run_dir / "summary.json").write_text(json.dumps({"run": spec.run, "checkpoints": entries}))
    return run_dir


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    config = make_config(str(root / "results"))
    p = plan(config)
    runs = {spec.norm.variant + "-" + spec.model.arch: write_run(spec, config, root)
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
    out = analyze_one(settings, runs[run], root / "out" / analysis / f"{run}.csv")
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
    if analysis == "curvature":  # top >= bottom, and the searches stayed within their budgets
        assert (table["top_eigenvalue"] >= table["bottom_eigenvalue"]).all()
        assert (table["products"] <= 2 * (settings["max_products"] + 1) + 1).all()


def _spec(run_dir) -> RunSpec:
    return RunSpec.from_dict(torch.load(run_dir / "checkpoints" / "step_0000000.pt")["spec"])


def test_one_job_computes_every_table_of_a_run_as_separate_jobs_would(setting, tmp_path, capsys):
    """The workflow's analysis job of a run computes all its tables in one process, loading each
    checkpoint once; the tables are byte for byte those of one job per table. Its log has a line
    per analysis and step (a spectrum at one step can take many minutes), then the step's total."""
    root, runs, p = setting
    run = runs["noisy_batchnorm-vgg"]
    # curvature stopped at 10 products (unconverged, NaN eigenvalues): the bytes still compare,
    # at a fifth of the converged cost
    short = {"curvature": {"max_products": 10}}
    jobs = [AnalysisJob(a, f"d{i}", dict(settings_for(p, "vgg", a), **short.get(a, {})))
            for i, a in enumerate(ANALYSES)]
    together = analyze(jobs, run, tmp_path / "together")
    assert [t.name for t in together] == ["ics-d0.csv", "landscape-d1.csv", "curvature-d2.csv"]
    log = capsys.readouterr().err.splitlines()
    first = [line.split(") ", 1)[1] for line in log if " (1/" in line]
    assert [line.rsplit(" ", 1)[0] for line in first[:3]] == ["ics", "landscape", "curvature"], log
    assert first[3].startswith("ics, landscape, curvature ") and first[3].endswith("s in all"), log
    for job, table in zip(jobs, together):
        (alone,) = analyze([job], run, tmp_path / f"alone-{job.analysis}")
        assert table.read_bytes() == alone.read_bytes(), job.analysis


def test_deterministic_and_noise_switch(setting):
    """Same inputs, same bytes; noise on gives other (but again reproducible) numbers."""
    root, runs, p = setting
    settings = settings_for(p, "vgg", "landscape")
    run = runs["noisy_batchnorm-vgg"]
    a = analyze_one(settings, run, root / "det" / "a.csv").read_bytes()
    b = analyze_one(settings, run, root / "det" / "b.csv").read_bytes()
    assert a == b
    noisy = dict(settings, noise=True)
    c = analyze_one(noisy, run, root / "det" / "c.csv").read_bytes()
    d = analyze_one(noisy, run, root / "det" / "d.csv").read_bytes()
    assert c == d and c != a


def test_steps_selection_and_listing_fallback(setting, tmp_path):
    """settings steps picks checkpoints (missing ones skipped); without summary.json the files on
    disk are listed."""
    root, runs, p = setting
    run = runs["batchnorm-dln"]
    settings = dict(settings_for(p, "dln", "curvature"), steps=[1, 99])
    table = pd.read_csv(analyze_one(settings, run, tmp_path / "c.csv"))
    assert table["step"].tolist() == [1]

    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    for step in (0, 1):
        src = checkpoint_path(run, step)
        (bare / "checkpoints" / src.name).write_bytes(src.read_bytes())
    table = pd.read_csv(analyze_one(settings_for(p, "dln", "curvature"), bare, tmp_path / "bare.csv"))
    assert table["step"].tolist() == [0, 1]


def test_diverged_checkpoint_is_skipped(setting, tmp_path):
    root, runs, p = setting
    state = torch.load(checkpoint_path(runs["batchnorm-dln"], 1))
    first = next(iter(k for k in state["model"] if k.endswith("weight")))
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    save_checkpoint(checkpoint_path(tmp_path, 7), state)
    out = analyze_one(settings_for(p, "dln", "ics"), tmp_path, tmp_path / "ics.csv")
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS["ics"] and len(table) == 0


def test_corrupt_checkpoint_names_the_file(setting, tmp_path):
    root, runs, p = setting
    path = checkpoint_path(tmp_path, 3)
    path.parent.mkdir(parents=True)
    path.write_bytes(checkpoint_path(runs["batchnorm-dln"], 1).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step_0000003.pt"):
        analyze_one(settings_for(p, "dln", "ics"), tmp_path, tmp_path / "ics.csv")
    assert not (tmp_path / "ics.csv").exists()


def test_a_checkpoint_that_would_run_code_is_refused(setting, tmp_path):
    """A checkpoint is a pickle: one holding anything beyond tensors and plain values is refused
    with an error naming the file, and its code never runs."""
    import os

    root, runs, p = setting
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(checkpoint_path(runs["batchnorm-dln"], 1))
    state["extra"] = Payload()
    checkpoint_path(tmp_path, 5).parent.mkdir(parents=True)
    torch.save(state, checkpoint_path(tmp_path, 5))
    with pytest.raises(CheckpointError, match=r"step_0000005.pt holds objects other than tensors"):
        analyze_one(settings_for(p, "dln", "ics"), tmp_path, tmp_path / "ics.csv")
    assert not marker.exists()


def test_analysis_dtype():
    """float64 for the deep linear network (its tiny steps are below float32 resolution),
    float32 otherwise, unless settings say otherwise."""
    from types import SimpleNamespace

    def arch(name):
        return SimpleNamespace(model=SimpleNamespace(arch=name))

    assert analysis_dtype(arch("dln"), {}) == torch.float64
    assert analysis_dtype(arch("vgg"), {"dtype": None}) == torch.float32
    assert analysis_dtype(arch("dln"), {"dtype": "float32"}) == torch.float32
    with pytest.raises(ValueError):
        analysis_dtype(arch("vgg"), {"dtype": "half"})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_activations_check_bn_eps_identity(setting, dtype):
    """Arora, Li & Lyu's scale invariance in a real BN layer: w . g = eps/(v + eps) gamma dL/dgamma
    per filter, so |cos(w, g)| is small but not 0, and the identity explains it. In float64 what it
    leaves is rounding (< 1e-10); float32 resolves far less (the reason the claim reads float64). With
    running statistics the layer is not scale-invariant: no identity to check (NaN)."""
    root, runs, _ = setting
    base = {"analysis": "activations", "steps": None, "batch_size": 16, "batches": 1, "seed": 0,
            "noise": False, "dtype": dtype}
    table = pd.read_csv(analyze_one({**base, "bn_mode": "batch"}, runs["batchnorm-vgg"],
                                    root / "out" / "eps" / f"batch-{dtype}.csv"))
    assert len(table) == 2 * len(build_model(_spec(runs["batchnorm-vgg"])).layer_groups())
    assert (table["weight_grad_cos"] > 0).all() and (table["weight_grad_cos"] < 1e-2).all()
    if dtype == "float64":
        assert table["unexplained_cos"].max() < 1e-10
        assert (table["weight_grad_cos"] > 1e4 * table["unexplained_cos"]).all()  # eps explains the cosine
    else:
        assert table["unexplained_cos"].max() < 1e-3
    running = pd.read_csv(analyze_one({**base, "bn_mode": "running"}, runs["batchnorm-vgg"],
                                      root / "out" / "eps" / f"running-{dtype}.csv"))
    assert running["unexplained_cos"].isna().all() and running["weight_grad_cos"].notna().all()
