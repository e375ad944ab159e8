"""Snakemake reruns exactly what changed, and nothing else, on a finished smoke DAG (`smoke_copy`):
a deleted per-run output retrains that run only, `--forcerun aggregate` redoes the tables and what
is drawn from them but trains nothing, `--until aggregate` stops before the figures, and a changed
study setting plans new runs for that study only. Mostly dry runs (-n), so this file is fast once
the session's smoke DAG exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import job_counts, run_snakemake, scheduled_jobs, smoke_raw, summaries, write_yaml

pytestmark = pytest.mark.e2e

SMOKE_STUDIES = set(smoke_raw()["studies"])


def dry_run(workdir: Path, *args: str) -> tuple[dict[str, int], list[tuple[str, dict]]]:
    """Job counts and (rule, wildcards) of a dry run. `args` may start with extra config files
    (they extend run_snakemake's `--configfile config/smoke.yaml`) and end with targets."""
    # `--configfile` takes every following word up to the next option: extra config files go
    # right after it, and "-n" ends the list before any target
    configs = [a for a in args if a.endswith((".yaml", ".yml"))]
    rest = [a for a in args if a not in configs]
    proc = run_snakemake(workdir, *configs, "-n", *rest)
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
    rel = str(target.relative_to(smoke_copy))
    others = mtimes(p for p in (smoke_copy / "results" / "runs").glob("*/summary.json")
                    if p != target)
    target.unlink()
    # asking for the file plans exactly one job: that run's training
    counts, jobs = dry_run(smoke_copy, rel)  # (targets go last: see dry_run)
    assert counts == {"train": 1, "total": 1}, counts
    assert jobs == [("train", {"run": victim})], jobs

    proc = run_snakemake(smoke_copy, "--cores", "1", rel)
    assert job_counts(proc.stdout + proc.stderr) == {"train": 1, "total": 1}
    assert target.exists()
    assert mtimes(others) == others, "another run's summary.json was rewritten"
    # the checkpoints survived (they are not outputs), so the job resumed instead of retraining
    log = (smoke_copy / "results" / "logs" / "train" / f"{victim}.log").read_text()
    steps = json.loads(target.read_text())["steps_done"]
    assert f"resuming {victim} from step {steps}" in log, log

    # the newer summary outdates only what is downstream of this run: no training, and only the
    # studies that use it
    counts, jobs = dry_run(smoke_copy)
    assert "train" not in counts and "prepare_data" not in counts, counts
    assert all(w.get("run") in (None, victim) for _, w in jobs), jobs
    aggregated = {w["study"] for rule, w in jobs if rule == "aggregate"}
    users = {s for s, cfg in smoke_raw()["studies"].items() if cfg["setup"] == "mlp"}
    assert aggregated == users, (aggregated, users)


def test_forcerun_aggregate_redoes_tables_and_downstream_but_no_training(smoke_copy):
    counts, jobs = dry_run(smoke_copy, "--forcerun", "aggregate")
    assert counts.get("aggregate") == len(SMOKE_STUDIES), counts
    for rule in ("figures", "claims", "track"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    for rule in ("train", "analyze", "prepare_data", "init_tracking"):
        assert rule not in counts, (rule, counts)
    assert {w["study"] for rule, w in jobs if rule == "aggregate"} == SMOKE_STUDIES


def test_until_aggregate_stops_before_figures(smoke_copy):
    study = "mnist_2015"
    runs = [r for r in summaries(smoke_copy) if r.startswith("mlp-")]
    tables = sorted((smoke_copy / "results" / "tables" / study).glob("*.csv"))
    figures = sorted((smoke_copy / "results" / "figures" / study).glob("*.png"))
    assert runs and tables and figures, "the smoke DAG made no mnist_2015 runs/tables/figures"
    kept = mtimes(figures + [smoke_copy / "results" / "claims.csv"])
    # a retrained run (a new summary) outdates its study's tables and everything drawn from them.
    # (A mere `touch` would not: Snakemake 9 keeps input checksums and ignores a newer mtime
    # when the content is unchanged.) Same data, new bytes:
    summary = smoke_copy / "results" / "runs" / runs[0] / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text())) + "\n")
    counts, _ = dry_run(smoke_copy)
    assert counts.get("aggregate") == 1 and counts.get("figures", 0) >= 1 and "claims" in counts
    # ... but --until aggregate stops there
    counts, jobs = dry_run(smoke_copy, "--until", "aggregate")
    assert counts == {"aggregate": 1, "total": 1}, counts
    assert jobs == [("aggregate", {"study": study})], jobs
    before = mtimes(tables)
    proc = run_snakemake(smoke_copy, "--until", "aggregate", "--cores", "1")
    assert job_counts(proc.stdout + proc.stderr) == {"aggregate": 1, "total": 1}
    assert all(t.stat().st_mtime_ns > before[t] for t in tables), "tables not rewritten"
    assert mtimes(kept) == kept, "--until aggregate touched figures or claims"
    # what is left for a plain run is at most downstream of that study's tables (nothing, here:
    # the rewritten tables have the same bytes, so Snakemake's checksums spare the figures)
    counts, jobs = dry_run(smoke_copy)
    assert {w["study"] for rule, w in jobs if rule == "figures"} <= {study}, jobs
    assert not {"aggregate", "train", "analyze"} & set(counts), counts


def test_changed_study_setting_reruns_only_that_study(smoke_copy, tmp_path):
    study, new_lr = "mnist_2015", 0.1
    lrs = smoke_raw()["studies"][study]["lrs"]
    assert new_lr not in lrs
    override = write_yaml(tmp_path / "more_lrs.yaml", {"studies": {study: {"lrs": lrs + [new_lr]}}})
    # two config files: smoke.yaml, then the change (later files win, keys merge)
    counts, jobs = dry_run(smoke_copy, str(override))
    trains = sorted(w["run"] for rule, w in jobs if rule == "train")
    variants = smoke_raw()["studies"][study]["variants"]
    assert len(trains) == len(variants), trains
    assert all(r.startswith("mlp-") and f"-lr{new_lr:g}-" in r for r in trains), trains
    assert not set(trains) & set(summaries(smoke_copy)), "an existing run would be retrained"
    studies = {w["study"] for rule, w in jobs if "study" in w}
    assert studies == {study}, f"jobs for other studies: {studies - {study}}"
    assert counts.get("aggregate") == 1 and "prepare_data" not in counts, counts
    # and the same dry run without the override still has nothing to do
    plain = run_snakemake(smoke_copy, "-n")
    assert "Nothing to be done" in plain.stdout + plain.stderr


def test_a_killed_run_needs_no_snakemake_folklore(tmp_path):
    """kill -9 of Snakemake and its job mid-training leaves Snakemake's lock and 'incomplete'
    mark. The README's one recovery command (`snakemake --unlock && snakemake --cores N`: the
    workflow profile sets rerun-incomplete) finishes the run, resuming it from its checkpoint."""
    import os
    import signal
    import subprocess
    import time

    from helpers import SNAKEMAKE

    cfg = smoke_raw()
    cfg["setups"]["vgg"]["optim"]["steps"] = 800
    cfg["setups"]["vgg"]["checkpoints"] = {"dense_until": 0, "dense_every": 1, "every": 20}
    cfg["studies"] = {"performance": {**cfg["studies"]["performance"], "variants": ["batchnorm"]}}
    config = write_yaml(tmp_path / "long.yaml", cfg)
    base = [SNAKEMAKE, "--snakefile", str(Path(__file__).resolve().parents[1] / "Snakefile"),
            "--directory", str(tmp_path), "--configfile", str(config)]
    proc = subprocess.Popen(base + ["--cores", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs = tmp_path / "results" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("*/checkpoints/step_0000040.pt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / ".snakemake" / "incomplete").iterdir()), "no incomplete mark left"
    assert not list(runs.glob("*/summary.json")), "the run finished before the kill"
    recover = subprocess.run(["bash", "-c", f"{' '.join(base)} --unlock && {' '.join(base)} --cores 1"],
                             capture_output=True, text=True, timeout=900)
    assert recover.returncode == 0, recover.stderr[-3000:]
    (summary,) = list(runs.glob("*/summary.json"))
    assert json.loads(summary.read_text())["steps_done"] == 800
    log = (tmp_path / "results" / "logs" / "train" / f"{summary.parent.name}.log").read_text()
    assert "resuming" in log
