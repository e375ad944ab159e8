"""MLflow tracking end to end: nothing is lost when parallel jobs log to one store (the default
SQLite file, and a tracking server), runs carry the tags/params the UI filters on, and a crashed or
killed training run ends FAILED and is continued (same MLflow run id) when the job is rerun.

The SQLite checks read the session's smoke DAG (`smoke_dag`, run with --cores 2); the server test
runs a two-study subset of the smoke DAG against `mlflow server` (tests/harness/mlflow_server.py);
the crash test drives `python -m bnstudy train` directly with a spec from the smoke DAG.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from helpers import (
    REPO, finite, metric_points, mlflow_training_runs, only_studies, read_rows, run_snakemake, sqlite_uri,
    summaries, toy_spec, write_yaml,
)

pytestmark = pytest.mark.e2e  # real job processes, the smoke DAG, a tracking server: minutes

EXPERIMENT = "bnstudy-smoke"  # config/smoke.yaml's tracking.experiment
SRC = str(REPO / "src")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def expected_git_commit() -> str:
    """What bnstudy.tracking.runs.git_commit should record: HEAD's hash, or "unknown" without one."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def study_members(workdir: Path) -> dict[str, set[str]]:
    """run id -> the studies whose aggregated runs.csv lists it."""
    out: dict[str, set[str]] = {}
    for table in (workdir / "results" / "tables").glob("*/runs.csv"):
        for row in read_rows(table):
            out.setdefault(row["run"], set()).add(table.parent.name)
    return out


def check_runs_complete(workdir: Path, uri: str, experiment: str, live: bool = True) -> dict[str, object]:
    """Every finished run of `workdir` has exactly one FINISHED MLflow run holding every metric
    point of its tables, with the expected tags and params, the name summary.json gives (no two
    runs share one) and the run's real times; returns run id -> MLflow run."""
    runs = summaries(workdir)
    assert runs, f"no results/runs/*/summary.json under {workdir}"
    tracked = mlflow_training_runs(uri, experiment)
    assert set(tracked) == set(runs), (f"MLflow runs {sorted(tracked)} != pipeline runs "
                                       f"{sorted(runs)}")
    members = study_members(workdir)
    commit = expected_git_commit()
    found = {}
    for run_id, summary in runs.items():
        assert len(tracked[run_id]) == 1, f"{run_id}: {len(tracked[run_id])} MLflow runs"
        run = tracked[run_id][0]
        found[run_id] = run
        tags, params = run.data.tags, run.data.params
        run_dir = workdir / "results" / "runs" / run_id
        spec = json.loads((run_dir / "spec.json").read_text())
        labels = summary["labels"]
        assert run.info.status == "FINISHED", f"{run_id}: {run.info.status}"
        if live:  # the training job tracked itself
            assert summary["mlflow_run_id"] == run.info.run_id
            assert summary["tracking"]["complete"] is True and summary["tracking"]["error"] is None, \
                (run_id, summary["tracking"])
            assert summary["tracking"]["run_id"] == run.info.run_id
        else:  # the track job sent it: the training job never touched MLflow
            assert summary["tracking"] == {"enabled": False} and summary["mlflow_run_id"] is None
        # the name the UI lists is the one the train job was given, and the run lasts as long as
        # its training did (a run sent after the fact too, not the moment it was sent)
        assert run.info.run_name == summary["name"], (run_id, run.info.run_name, summary["name"])
        assert run.info.end_time == summary["ended_ms"], (run_id, run.info.end_time, summary["ended_ms"])
        if live:  # the job opened its run once it had started
            assert summary["started_ms"] <= run.info.start_time <= summary["ended_ms"], run_id
        else:
            assert run.info.start_time == summary["started_ms"], (run_id, run.info.start_time)
        assert tags["variant"] == labels["variant"] == spec["norm"]["variant"]
        assert tags["lr"] == f"{labels['lr']:g}"
        assert tags["seed"] == str(labels["seed"])
        assert tags["status"] == summary["status"]
        assert set(tags["study"].split(",")) == members[run_id], (run_id, tags["study"])
        assert tags["git_commit"] == commit
        assert Path(tags["checkpoint_dir"]) == (run_dir / "checkpoints").resolve()
        assert any(Path(tags["checkpoint_dir"]).glob("step_*.pt")), "checkpoint_dir is empty"
        assert re.fullmatch(r"[0-9a-f]{12}", tags["bnstudy.execution"]), tags["bnstudy.execution"]
        # the resolved spec is logged as params (flattened keys)
        assert params["run"] == run_id
        assert params["norm.variant"] == labels["variant"]
        assert float(params["optim.lr"]) == labels["lr"]
        assert params["seed"] == str(labels["seed"])
        assert params["optim.steps"] == str(spec["optim"]["steps"])
        # every metric row of the tables is in MLflow, once, with the same value
        train = [r for r in read_rows(run_dir / "train.csv") if finite(r["loss"])]
        points = metric_points(uri, run.info.run_id, "train_loss")
        assert len(points) == len(train), f"{run_id}: {len(points)} train_loss points, " \
                                          f"{len(train)} finite rows in train.csv"
        assert sorted((p.step, p.value) for p in points) == \
            sorted((int(r["step"]), float(r["loss"])) for r in train)
        test_eval = [r for r in read_rows(run_dir / "eval.csv")
                     if r["split"] == "test" and finite(r["loss"])]
        assert len(metric_points(uri, run.info.run_id, "test_eval_loss")) == len(test_eval)
        for key, value in summary["final"].items():
            if value is not None:
                assert math.isclose(run.data.metrics[f"final_{key}"], value), (run_id, key)
    names = sorted(r.info.run_name for r in found.values())
    assert len(set(names)) == len(names), f"runs of one execution share a name: {names}"
    return found


# ---------------------------------------------------------------------------------------------
# (a) the default SQLite store, after the smoke DAG ran with 2 parallel jobs


def test_smoke_dag_runs_are_all_in_sqlite_store(smoke_dag):
    check_runs_complete(smoke_dag, sqlite_uri(smoke_dag), EXPERIMENT)


def test_tracking_after_training_sends_every_run_once(tmp_path):
    """tracking.live: false: training jobs never import mlflow (no init_tracking job either);
    the workflow's track job sends every run, every point once, the analysis tables and figures."""
    work = tmp_path / "work"
    work.mkdir()
    override = write_yaml(tmp_path / "batch.yaml", {"tracking": {"live": False}, **only_studies("ics_dln")})
    proc = run_snakemake(work, str(override), "--cores", "2")
    out = proc.stdout + proc.stderr
    assert "init_tracking" not in out and "rule track:" in out
    for log in (work / "results" / "logs" / "train").glob("*.log"):
        assert "mlflow" not in log.read_text().lower(), log
    uri = sqlite_uri(work)
    runs = check_runs_complete(work, uri, EXPERIMENT, live=False)
    record = json.loads((work / "results" / "tracking" / "track.json").read_text())
    assert record["repaired"] == len(runs) == 2 and record["points"] > 0 and record["figures_run"]
    for run_id, run in runs.items():
        listed = [Path(a.path).name for a in client(uri).list_artifacts(run.info.run_id, "analysis")]
        assert listed == sorted(p.name for p in (work / "results" / "analysis" / run_id).glob("*.csv"))
    again = run_snakemake(work, str(override), "--cores", "1", "--forcerun", "track")
    record = json.loads((work / "results" / "tracking" / "track.json").read_text())
    assert record["repaired"] == 0 and record["points"] == 0, (record, again.stdout[-2000:])


def test_untracked_training_never_imports_mlflow(tmp_path):
    """tracking.live: false: a training job runs without importing mlflow (the track job sends
    its run later), and its summary.json carries what that needs: the run's name (--name) and
    when it started and ended."""
    from helpers import prepared_spec

    spec = prepared_spec(tmp_path, "vgg-batchnorm").to_dict()
    run_dir = tmp_path / "results" / "runs" / spec["run"]
    tracking = {"enabled": True, "live": False, "uri": None, "experiment": EXPERIMENT,
                "results": str(tmp_path / "results")}
    check = textwrap.dedent("""
        import sys
        from bnstudy.cli import main
        main(sys.argv[1:])
        assert "mlflow" not in sys.modules, "the training job imported mlflow"
        """)
    started = time.time() * 1000
    done = subprocess.run([sys.executable, "-c", check, "train", "--spec", json.dumps(spec),
                           "--run-dir", str(run_dir), "--tracking", json.dumps(tracking),
                           "--threads", "1", "--name", "vgg batchnorm lr=0.1 seed=0 width=x"],
                          env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True,
                          timeout=300)
    ended = time.time() * 1000
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tracking"] == {"enabled": False} and summary["mlflow_run_id"] is None
    assert summary["name"] == "vgg batchnorm lr=0.1 seed=0 width=x"
    assert started <= summary["started_ms"] < summary["ended_ms"] <= ended


def test_one_execution_tag_per_pipeline_execution(smoke_dag):
    uri = sqlite_uri(smoke_dag)
    tracked = mlflow_training_runs(uri, EXPERIMENT)
    executions = {r.data.tags["bnstudy.execution"] for runs in tracked.values() for r in runs}
    assert len(executions) == 1, f"one smoke DAG execution, several execution tags: {executions}"
    (execution,) = executions
    assert execution != "manual"
    # the figures of that execution are in one 'figures' run with the same tag
    exp = client(uri).get_experiment_by_name(EXPERIMENT)
    figure_runs = client(uri).search_runs([exp.experiment_id], "tags.`bnstudy.figures` = 'true'")
    assert [r.data.tags["bnstudy.execution"] for r in figure_runs] == [execution]
    record = json.loads((smoke_dag / "results" / "tracking" / "track.json").read_text())
    assert record["figures_run"] == figure_runs[0].info.run_id and record["execution"] == execution
    assert record["repaired"] == 0 and record["points"] == 0, record  # live tracking sent everything
    artifacts = [a.path for a in client(uri).list_artifacts(record["figures_run"], "figures")]
    pngs = sorted(smoke_dag.glob("results/figures/*/*.png"))
    assert len(artifacts) == len({p.parent.name for p in pngs}), artifacts


def test_parallel_writers_lose_nothing(tmp_path):
    """N processes log through MlflowTracker into one SQLite file at the same moment, flushing
    small batches so their writes interleave; every point arrives and every run is FINISHED."""
    n_proc, steps = 6, 200
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from bnstudy.tracking.store import init_store
        init_store({uri!r}, "concurrency", None)
        """)], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent("""
        import sys, time
        from pathlib import Path
        import bnstudy.tracking.tracker as tracking
        from bnstudy.config.spec import RunSpec
        uri, i, steps, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        tracking.FLUSH_ROWS = 15          # many small batches: maximal write interleaving
        spec = RunSpec.from_json(Path(sys.argv[6]).read_text()).updated(
            {"run": f"conc-{i}", "setup": "toy", "seed": i, "dataset.name": "none", "norm.variant": "batchnorm",
             "optim.lr": 0.1, "optim.steps": steps})
        t = tracking.MlflowTracker(uri, "concurrency", spec, Path(sys.argv[5]), studies=["conc"])
        while time.time() < start_at:     # all workers start writing at the same moment, once
            time.sleep(0.005)             # their runs are open
        for step in range(steps):
            t.log_metrics({"train_loss": i + step / 1000, "train_accuracy": step / steps,
                           "other": float(step)}, step)
        t.finish("completed", {"final": {"test_loss": float(i)}, "diverged_step": None})
        print(t.run_id)
        """))
    base_spec = tmp_path / "spec.json"
    base_spec.write_text(toy_spec("conc").to_json())
    start_at = time.time() + 8  # after every interpreter has imported mlflow and opened its run
    procs = [subprocess.Popen([sys.executable, str(worker), uri, str(i), str(steps), str(start_at),
                               str(tmp_path / f"run{i}"), str(base_spec)],
                              env={**os.environ, "PYTHONPATH": SRC},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n_proc)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    tracked = mlflow_training_runs(uri, "concurrency")
    assert sorted(tracked) == sorted(f"conc-{i}" for i in range(n_proc))
    for i in range(n_proc):
        (run,) = tracked[f"conc-{i}"]
        assert run.info.status == "FINISHED"
        assert run.info.run_id == outs[i][0].strip()
        for key, value in (("train_loss", lambda s: i + s / 1000), ("other", float)):
            points = metric_points(uri, run.info.run_id, key)
            assert sorted(p.step for p in points) == list(range(steps)), (i, key, len(points))
            assert all(p.value == value(p.step) for p in points), (i, key)
        assert run.data.metrics["final_test_loss"] == float(i)


# ---------------------------------------------------------------------------------------------
# (b) a tracking server: the URI comes from the config, jobs log over HTTP


def test_smoke_subset_logs_everything_to_mlflow_server(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                      log=tmp_path / "server.log") as server:
        override = write_yaml(tmp_path / "server.yaml", {
            "tracking": {"uri": server.url, "experiment": "bnstudy-server"},
            **only_studies("ics_dln")})
        # two configfiles: smoke.yaml, then the override (later files win, keys merge)
        proc = run_snakemake(work, str(override), "--cores", "2")
        assert "Finished job" in proc.stdout + proc.stderr
        runs = check_runs_complete(work, server.url, "bnstudy-server")
        assert {r.split("-")[0] for r in runs} == {"dln"} and len(runs) == 2
        # analysis tables and figures went through the server's artifact proxy
        ics_runs = [r for r in runs if r.startswith("dln")]
        tables = {r: sorted(p.name for p in (work / "results" / "analysis" / r).glob("ics-*.csv")) for r in ics_runs}
        for run_id in ics_runs:
            listed = client(server.url).list_artifacts(runs[run_id].info.run_id, "analysis")
            assert [Path(a.path).name for a in listed] == tables[run_id] and len(tables[run_id]) == 1
        stored = {p.name for p in (tmp_path / "server-artifacts").rglob("*") if p.is_file()}
        assert {name for names in tables.values() for name in names} <= stored
        pngs = {p.name for p in work.glob("results/figures/*/*.png")}
        assert pngs and pngs <= stored, (pngs, stored)
        assert server.proc.poll() is None, "the server died during the run"
    # nothing fell back to a local store
    assert not (work / "results" / "mlflow.db").exists()
    assert not (work / "mlruns").exists()


# ---------------------------------------------------------------------------------------------
# (c) a crash or a kill marks the run FAILED; the rerun continues the same MLflow run


def _train_cmd(spec: dict, run_dir: Path, tracking: dict) -> list[str]:
    return [sys.executable, "-m", "bnstudy", "train", "--spec", json.dumps(spec),
            "--run-dir", str(run_dir), "--tracking", json.dumps(tracking),
            "--studies", "crash_test", "--threads", "1", "--name", "crash test run"]


def test_crash_and_sigterm_end_failed_and_resume_continues_the_run(smoke_dag, tmp_path):
    run_id, _ = next((r, s) for r, s in summaries(smoke_dag).items() if r.startswith("vgg-"))
    spec = json.loads((smoke_dag / "results" / "runs" / run_id / "spec.json").read_text())
    steps = 150
    spec["optim"]["steps"] = steps
    spec["checkpoints"] = list(range(0, steps + 1, 10))
    spec["log"]["eval_every"] = 50
    work = tmp_path / "work"
    (work / "results" / "data").mkdir(parents=True)
    data = Path(spec["dataset"]["path"])
    (work / data).symlink_to(smoke_dag / data)
    run_dir = work / "results" / "runs" / run_id
    tracking = {"enabled": True, "uri": None, "experiment": "crash", "results": "results"}
    uri = f"sqlite:///{work / 'results' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": SRC, "BNSTUDY_EXECUTION": "crashtest001"}
    init = subprocess.run([sys.executable, "-m", "bnstudy", "init-tracking", "--tracking",
                           json.dumps(tracking), "--artifacts", "results/mlartifacts", "--out",
                           "results/tracking/ready.json"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert init.returncode == 0, init.stderr

    def mlflow_run():
        tracked = mlflow_training_runs(uri, "crash")
        assert list(tracked) == [run_id] and len(tracked[run_id]) == 1, tracked
        return tracked[run_id][0]

    # 1. training crashes mid-way (injected where the loop hands metrics to the tracker): FAILED,
    #    with the reason (a tracking outage itself no longer fails a job: test_tracking_outage.py)
    crash = textwrap.dedent("""
        import sys, bnstudy.tracking.tracker as tracking
        original = tracking.MlflowTracker.log_metrics
        def log_metrics(self, metrics, step):
            if step >= 25:
                raise RuntimeError("injected tracker failure")
            original(self, metrics, step)
        tracking.MlflowTracker.log_metrics = log_metrics
        from bnstudy.cli import main
        main(sys.argv[1:])
        """)
    first_started = time.time() * 1000
    first = subprocess.run([sys.executable, "-c", crash, *_train_cmd(spec, run_dir, tracking)[3:]],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    first_ended = time.time() * 1000
    assert first.returncode == 1, first.stderr[-3000:]
    assert "injected tracker failure" in first.stderr
    run = mlflow_run()
    assert run.info.status == "FAILED"
    assert "RuntimeError: injected tracker failure" in run.data.tags["failure"]
    assert not (run_dir / "summary.json").exists()
    first_id = run.info.run_id
    saved = sorted(run_dir.glob("checkpoints/step_*.pt"))
    assert saved and saved[-1].name == "step_0000020.pt", saved

    # 2. resumed, then killed by SIGTERM (what scancel / preemption / a time limit sends)
    proc = subprocess.Popen(_train_cmd(spec, run_dir, tracking), cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = run_dir / "checkpoints" / "step_0000050.pt"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.exists() and proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-3000:])
    assert f"resuming {run_id} from step 20" in err
    run = mlflow_run()
    assert run.info.run_id == first_id
    assert run.info.status == "FAILED"
    assert run.data.tags["failure"] == f"SystemExit: {128 + signal.SIGTERM}"
    assert not (run_dir / "summary.json").exists()
    last = max(int(p.stem.split("_")[1]) for p in run_dir.glob("checkpoints/step_*.pt"))
    assert 50 <= last < steps

    # 3. the rerun resumes from the last checkpoint and finishes the same MLflow run
    done = subprocess.run(_train_cmd(spec, run_dir, tracking), cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {run_id} from step {last}" in done.stderr
    run = mlflow_run()
    assert run.info.run_id == first_id
    assert run.info.status == "FINISHED"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mlflow_run_id"] == first_id
    # the name given to the job; the run started with the first attempt (the checkpoints keep
    # that time through both resumes) and ended with the last
    assert summary["name"] == run.info.run_name == "crash test run"
    assert first_started <= summary["started_ms"] <= first_ended, (first_started, summary["started_ms"])
    assert summary["started_ms"] <= run.info.start_time <= first_ended
    assert run.info.end_time == summary["ended_ms"] > first_ended
    assert summary["tracking"]["complete"] is True, summary["tracking"]
    assert run.data.tags["bnstudy.execution"] == "crashtest001"
    # every step's loss is in MLflow once, with the value in train.csv: the steps a killed attempt
    # logged after its last checkpoint are not logged again by the resume
    train = {int(r["step"]): float(r["loss"]) for r in read_rows(run_dir / "train.csv")}
    assert sorted(train) == list(range(steps))
    points = metric_points(uri, first_id, "train_loss")
    assert sorted(p.step for p in points) == sorted(train), "a step is missing or logged twice"
    mismatched = [(p.step, p.value, train[p.step]) for p in points if p.value != train[p.step]]
    assert not mismatched, mismatched[:5]
