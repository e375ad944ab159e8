"""aggregate(): per-run and analysis tables -> a study's labelled tables folder, including a
diverged run and bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from synthetic_tables import FIXTURE_DIGEST, STUDIES, Outcome, default_outcome, make_study

from bnstudy.tables.aggregate import aggregate
from bnstudy.files import LABEL_COLUMNS, RUN_TABLES, TableError

STUDY = "claim_initialisation"  # has a grid column (init_scale)
CFG = {**STUDIES[STUDY], "ics": {}, "lrs": [0.1]}  # and an analysis


def _outcome(variant, lr, seed, grid):
    """The standard run at init_scale 2, seed 1 diverges at step 60."""
    if variant == "standard" and seed == 1 and grid["model.init_scale"] == 2.0:
        return Outcome(diverged_step=60)
    return default_outcome(variant, lr, seed, grid)


def run_aggregate(root: Path, run_dirs, out: Path, analyses=("ics",)):
    return aggregate(STUDY, CFG, run_dirs, {name: FIXTURE_DIGEST for name in analyses}, root / "analysis", out)


@pytest.fixture()
def study(tmp_path):
    run_dirs, analyses = make_study(tmp_path, STUDY, CFG, outcome=_outcome)
    return tmp_path, run_dirs, analyses


def test_tables_are_labelled_and_keep_the_diverged_run(study):
    root, run_dirs, analyses = study
    written = run_aggregate(root, run_dirs, root / "out")
    assert sorted(p.name for p in written) == sorted(f"{n}.csv" for n in ["runs", *RUN_TABLES, "ics"])

    runs = pd.read_csv(root / "out" / "runs.csv")
    assert len(runs) == len(run_dirs) == 2 * 3 * 3  # variants x seeds x init scales
    assert list(runs.columns[:6]) == LABEL_COLUMNS + ["init_scale"]
    diverged = runs[runs["status"] == "diverged"]
    assert len(diverged) == 1
    row = diverged.iloc[0]
    assert (row["variant"], row["seed"], row["init_scale"], row["diverged_step"]) == ("standard", 1, 2.0, 60)
    assert pd.isna(row["final_test_accuracy"]) and row["steps_done"] == 60 and row["steps"] == 200
    completed = runs[runs["status"] == "completed"]
    assert completed["final_test_accuracy"].notna().all() and (completed["steps_done"] == 200).all()
    assert completed["final_train_batches_accuracy"].notna().all()
    assert set(runs["init_scale"]) == {0.5, 1.0, 2.0}

    for name, columns in RUN_TABLES.items():
        table = pd.read_csv(root / "out" / f"{name}.csv")
        assert list(table.columns) == LABEL_COLUMNS + ["init_scale"] + columns, name
    train = pd.read_csv(root / "out" / "train.csv")
    # every row carries its run's labels: the diverged run's rows stop at its divergence step
    rows = train[train["run"] == row["run"]]
    assert rows["step"].max() == 60 and (rows["status"] == "diverged").all()
    assert set(train.groupby("run")["variant"].nunique()) == {1}
    units = pd.read_csv(root / "out" / "units.csv")
    assert units.groupby(["run", "step", "layer"])["unit"].nunique().min() == 4

    ics = pd.read_csv(root / "out" / "ics.csv")
    assert set(ics["run"]) == set(runs["run"]) and {"l2_diff", "lr", "seed", "init_scale"} <= set(ics.columns)
    assert not list((root / "out").glob(".*")), "temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert (root / "out" / "runs.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_empty_inputs_keep_headers(tmp_path, study):
    root, run_dirs, analyses = study
    for run_dir in run_dirs:  # a run that logged no layer statistics
        pd.DataFrame(columns=RUN_TABLES["layers"]).to_csv(run_dir / "layers.csv", index=False)
    run_aggregate(root, run_dirs, tmp_path / "a")
    layers = pd.read_csv(tmp_path / "a" / "layers.csv")
    assert layers.empty and list(layers.columns) == LABEL_COLUMNS + ["init_scale"] + RUN_TABLES["layers"]

    run_aggregate(root, [], tmp_path / "b")
    for name in ("runs", "train", "eval", "layers", "units", "ics"):
        frame = pd.read_csv(tmp_path / "b" / f"{name}.csv")
        assert frame.empty and "run" in frame.columns and "init_scale" in frame.columns


@pytest.mark.parametrize("breakage, culprit", [
    (lambda d: (d / "eval.csv").unlink(), "eval.csv"),
    (lambda d: (d / "summary.json").write_text("{not json"), "summary.json"),
    (lambda d: pd.read_csv(d / "train.csv").drop(columns="loss").to_csv(d / "train.csv", index=False),
     "train.csv"),
    (lambda d: (d / "spec.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "spec.json").read_text()).items() if k != "model"})),
     "spec.json"),
])
def test_bad_input_names_the_file(study, breakage, culprit):
    root, run_dirs, _ = study
    victim = run_dirs[3]
    breakage(victim)
    with pytest.raises(TableError) as error:
        run_aggregate(root, run_dirs, root / "out")
    message = str(error.value)
    assert culprit in message and victim.name in message
    assert not (root / "out" / "runs.csv").exists(), "nothing is written on error"


def test_missing_analysis_table_names_the_file(study):
    root, run_dirs, analyses = study
    victim = sorted(analyses["ics"].items())[3][1]
    victim.unlink()
    with pytest.raises(TableError, match=victim.name):
        run_aggregate(root, list(analyses["ics"]), root / "out")
    assert not (root / "out" / "ics.csv").exists()
