"""Snakemake reruns exactly what changed, and nothing else, on a finished smoke DAG (`smoke_copy`):
a deleted per-run output retrains that run only, `--forcerun aggregate` redoes the tables and what
is drawn from them but trains nothing, `--until aggregate` stops before the figures, and a changed
study setting plans new runs for that study only. Mostly dry runs (-n), so this file is fast once
the session's smoke DAG exists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))
from testlib import job_counts, scheduled_jobs, smoke_config, summaries, write_yaml  # noqa: E402

from conftest import run_snakemake  # noqa: E402

SMOKE_STUDIES = set(smoke_config()["studies"])


def dry_run(workdir: Path, *args: str) -> tuple[dict[str, int], list[tuple[str, dict]]]:
    proc = run_snakemake(workdir, *args, "-n")
    out = proc.stdout + proc.stderr
    return job_counts(out), scheduled_jobs(out)


def mtimes(paths) -> dict[Path, int]:
    return {Path(p): Path(p).stat().st_mtime_ns for p in paths}


def test_finished_dag_has_nothing_to_do(smoke_copy):
    """The baseline the other tests rely on: a copied, finished DAG is up to date (no absolute
    paths in params, no code/params drift between the fixture and the copy)."""
    proc = run_snakemake(smoke_copy, "-n")
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" in out, out[-3000:]


def test_deleted_summary_retrains_only_that_run(smoke_copy):
    runs = summaries(smoke_copy)
    victim = sorted(r for r in runs if r.startswith("mlp-"))[0]
    target = smoke_copy / "results" / "runs" / victim / "summary.json"
    others = mtimes(p for p in (smoke_copy / "results" / "runs").glob("*/summary.json")
                    if p != target)
    target.unlink()
    counts, jobs = dry_run(smoke_copy)
    trains = [w["run"] for rule, w in jobs if rule == "train"]
    assert trains == [victim], trains
    assert counts.get("train") == 1 and "prepare_data" not in counts \
        and "init_tracking" not in counts, counts
    # downstream of that run only: its studies' analyses/aggregates, never another run's training
    assert all(w.get("run") in (None, victim) for rule, w in jobs if rule == "analyze")

    # rebuild just that file: one train job; every other run's outputs stay untouched
    proc = run_snakemake(smoke_copy, str(target.relative_to(smoke_copy)), "--cores", "1")
    out = proc.stdout + proc.stderr
    assert job_counts(out) == {"train": 1, "total": 1}, job_counts(out)
    assert target.exists()
    assert mtimes(others) == others
    # the checkpoints survived (they are not outputs), so the job resumed instead of retraining
    log = (smoke_copy / "results" / "logs" / "train" / f"{victim}.log").read_text()
    steps = json.loads(target.read_text())["steps_done"]
    assert f"resuming {victim} from step {steps}" in log, log


def test_forcerun_aggregate_redoes_tables_and_downstream_but_no_training(smoke_copy):
    counts, jobs = dry_run(smoke_copy, "--forcerun", "aggregate")
    assert counts.get("aggregate") == len(SMOKE_STUDIES), counts
    for rule in ("figure", "claims", "track_figures"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    for rule in ("train", "analyze", "prepare_data", "init_tracking"):
        assert rule not in counts, (rule, counts)
    assert {w["study"] for rule, w in jobs if rule == "aggregate"} == SMOKE_STUDIES


def test_until_aggregate_stops_before_figures(smoke_copy):
    study = "mnist_2015"
    table = smoke_copy / "results" / "tables" / study / "runs.csv"
    figures = sorted((smoke_copy / "results" / "figures" / study).glob("*.png"))
    assert figures, "the smoke DAG drew no figure for mnist_2015"
    before = mtimes(figures + [smoke_copy / "results" / "claims.csv"])
    table.unlink()
    counts, _ = dry_run(smoke_copy, "--until", "aggregate")
    assert counts == {"aggregate": 1, "total": 1}, counts
    proc = run_snakemake(smoke_copy, "--until", "aggregate", "--cores", "1")
    assert job_counts(proc.stdout + proc.stderr) == {"aggregate": 1, "total": 1}
    assert table.exists()
    assert mtimes(before) == before, "--until aggregate touched figures or claims"
    # the figures are now outdated: a plain run would redraw them
    counts, jobs = dry_run(smoke_copy)
    assert {w["study"] for rule, w in jobs if rule == "figure"} == {study}, jobs
    assert "aggregate" not in counts and "train" not in counts, counts


def test_changed_study_setting_reruns_only_that_study(smoke_copy, tmp_path):
    study, new_lr = "mnist_2015", 0.1
    lrs = smoke_config()["studies"][study]["lrs"]
    assert new_lr not in lrs
    override = write_yaml(tmp_path / "more_lrs.yaml", {"studies": {study: {"lrs": lrs + [new_lr]}}})
    # two config files: smoke.yaml, then the change (later files win, keys merge)
    counts, jobs = dry_run(smoke_copy, str(override))
    trains = sorted(w["run"] for rule, w in jobs if rule == "train")
    variants = smoke_config()["studies"][study]["variants"]
    assert len(trains) == len(variants), trains
    assert all(r.startswith("mlp-") and f"-lr{new_lr:g}-" in r for r in trains), trains
    assert not set(trains) & set(summaries(smoke_copy)), "an existing run would be retrained"
    studies = {w["study"] for rule, w in jobs if "study" in w}
    assert studies == {study}, f"jobs for other studies: {studies - {study}}"
    assert counts.get("aggregate") == 1 and "prepare_data" not in counts, counts
    # and the same dry run without the override still has nothing to do
    plain = run_snakemake(smoke_copy, "-n")
    assert "Nothing to be done" in plain.stdout + plain.stderr
