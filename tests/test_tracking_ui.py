"""How the MLflow UI shows bnstudy's runs: the experiment is of the model training kind (the tag
`mlflow.experimentKind` that MLflow 3's UI reads and writes), and each run carries the studies it
serves, `study` (comma-separated) and one `study.<name>` tag per study, to group the runs table by.

A real MlflowClient on one SQLite store for the module (MLflow's migrations take seconds; each
test uses experiments of its own): no server, no training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import toy_spec

from bnstudy.tracking import sync as track
from bnstudy.tracking import runs
from bnstudy.tracking import store as tracking_store

KIND = "custom_model_development"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The store, created by bnstudy with its experiment: that experiment is of the model training
    kind."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    _, _, created = tracking_store.connect(uri, "fresh", folder / "artifacts")
    assert created
    return uri


def raw_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def kind(uri: str, experiment: str) -> str | None:
    return raw_client(uri).get_experiment_by_name(experiment).tags.get("mlflow.experimentKind")


def test_tag_names_are_mlflows():
    assert tracking_store.EXPERIMENT_KIND_TAG == "mlflow.experimentKind"
    assert tracking_store.EXPERIMENT_KIND == KIND


def test_a_created_experiment_is_of_the_model_training_kind(store, tmp_path):
    assert kind(store, "fresh") == KIND  # created with the store
    # an experiment created in an existing store (no store lock path) too
    tracking_store.connect(store, "second", tmp_path / "artifacts")
    assert kind(store, "second") == KIND


def test_an_existing_experiment_gets_the_kind_once_and_a_chosen_kind_stays(store, tmp_path):
    raw = raw_client(store)
    raw.create_experiment("old")  # made before bnstudy set the kind
    chosen = raw.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert kind(store, "old") is None
    _, exp, _ = tracking_store.connect(store, "old")
    assert kind(store, "old") == KIND and exp == raw.get_experiment_by_name("old").experiment_id
    tracking_store.connect(store, "chosen")
    assert raw.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_run_tags_name_each_study():
    spec = toy_spec("r1", {"setup": "vgg", "norm.variant": "batchnorm", "optim.lr": 0.1, "seed": 0,
                           "dataset.name": "cifar10"})
    tags = runs.run_tags(spec, Path("."), ["ics", "landscape"], "x")
    assert tags["study"] == "ics,landscape"
    assert tags["study.ics"] == tags["study.landscape"] == "true"
    assert not [k for k in runs.run_tags(spec, Path("."), [], "x") if k.startswith("study.")]


def finished_run(results: Path, run: str, studies: list[str]) -> None:
    """A run folder as a training job leaves it (tracking off: summary.json names its studies)."""
    folder = results / "runs" / run
    folder.mkdir(parents=True)
    spec = toy_spec(run, {"setup": "vgg", "norm.variant": "batchnorm", "optim.lr": 0.1, "seed": 0,
                          "dataset.name": "cifar10"})
    (folder / "spec.json").write_text(spec.to_json())
    (folder / "summary.json").write_text(json.dumps({
        "status": "finished", "final": {"test_accuracy": 0.5}, "diverged_step": None,
        "started_ms": 1_700_000_000_000, "ended_ms": 1_700_000_060_000,
        "tracking": {"enabled": False, "studies": studies}}))
    with open(folder / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "accuracy"])
        writer.writerows([[0, 2.3, 0.1], [1, 2.0, 0.2]])


def runs_table(results: Path, study: str, runs: list[str]) -> None:
    table = results / "tables" / study / "runs.csv"
    table.parent.mkdir(parents=True)
    table.write_text("run\n" + "".join(f"{r}\n" for r in runs))


def test_track_tags_the_runs_by_study_and_names_the_runs_page(tmp_path, store):
    results = tmp_path / "results"
    finished_run(results, "r1", ["ics"])
    finished_run(results, "r2", [])  # trained before runs knew their studies
    runs_table(results, "ics", ["r1"])
    runs_table(results, "landscape", ["r1", "r2"])  # a study added later shares both runs
    # a store from before: the experiment has no kind, r1's run only the old `study` tag
    raw = raw_client(store)
    exp = raw.create_experiment("synced")
    old = raw.create_run(exp, run_name="vgg batchnorm lr=0.1 seed=0",
                         tags={"bnstudy.run": "r1", "study": "ics"}).info.run_id

    report = track.sync(results, store, "synced", artifact_root=tmp_path / "artifacts", log=lambda m: None)
    assert report["failed"] == [] and report["repaired"] == 2, report
    assert kind(store, "synced") == KIND
    assert report["experiment_id"] == exp
    assert report["ui_page"] == f"#/experiments/{exp}/runs?workflowType=machine_learning"
    tags = {r.data.tags["bnstudy.run"]: r.data.tags for r in raw.search_runs([exp])}
    assert raw.get_run(old).data.tags == tags["r1"]
    assert tags["r1"]["study"] == "ics,landscape"
    assert tags["r1"]["study.ics"] == tags["r1"]["study.landscape"] == "true"
    assert tags["r2"]["study"] == "landscape" and tags["r2"]["study.landscape"] == "true"
    assert "study.ics" not in tags["r2"]
    # the runs table filters (and groups) by one study's tag: the shared run is in both
    found = raw.search_runs([exp], "tags.`study.landscape` = 'true'")
    assert sorted(r.data.tags["bnstudy.run"] for r in found) == ["r1", "r2"]

    again = track.sync(results, store, "synced", artifact_root=tmp_path / "artifacts", log=lambda m: None)
    assert again["repaired"] == 0 and again["points"] == 0 and again["runs"] == [], again


def test_runs_page_of_a_server_is_a_full_address():
    assert track.runs_page("http://host:5000/", "7") == \
        "http://host:5000/#/experiments/7/runs?workflowType=machine_learning"
