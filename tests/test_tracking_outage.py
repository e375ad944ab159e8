"""A tracking outage degrades tracking, never the science (issue 3).

Training jobs (`python -m bnstudy train`, smoke specs made longer) lose their MLflow store: the
SQLite file is deleted under two running jobs (and before two jobs start), a tracking server is
stopped (and comes back before the end), a server is frozen until the job ends, a server is
frozen and the job gets SIGTERM. Each
time the jobs end within a bounded time (MLflow's async workers, which the interpreter waits for
at exit, included) with every table written and summary.json saying whether tracking is complete
(stderr says so once when it is not). The store then ends up holding exactly what the run folders hold, one MLflow run
per run and every metric point once: the jobs re-send what a recreated store lost, and
`bnstudy track` what a dead server never got; a second `bnstudy track` sends nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from helpers import REPO, metric_points, mlflow_training_runs, prepared_spec, read_rows

from bnstudy.files import eval_metric

e2e = pytest.mark.e2e  # training jobs against a store that fails under them: minutes

SRC = str(REPO / "src")
TABLES = ("spec.json", "summary.json", "train.csv", "eval.csv", "layers.csv", "units.csv")
STEPS = 1000  # 6-10 s of training on one thread of the 2-core build machine


def long_spec(tmp_path: Path, prefix: str, steps: int) -> dict:
    """A smoke VGG spec that trains for `steps` steps (~100 steps/s on one thread here), logging
    every step's loss, an evaluation and a checkpoint every 100 steps."""
    spec = prepared_spec(tmp_path, prefix, steps=steps).to_dict()  # a plain dict: the JSON --spec takes
    spec["checkpoints"] = list(range(0, steps + 1, 100))
    spec["log"].update(train_every=1, eval_every=100, layers_every=500)
    return spec


def tracking_json(uri: str | None, experiment: str) -> str:
    return json.dumps({"enabled": True, "uri": uri, "experiment": experiment, "results": "results"})


def env() -> dict:
    # metrics are sent every second (default 5): the outage can come early in a short run
    return {**os.environ, "PYTHONPATH": SRC, "BNSTUDY_EXECUTION": "outage000001",
            "BNSTUDY_TRACKING_FLUSH_SECONDS": "1"}


def bnstudy(work: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnstudy", *args], cwd=work, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def init_tracking(work: Path, uri: str | None, experiment: str) -> None:
    done = bnstudy(work, "init-tracking", "--tracking", tracking_json(uri, experiment),
                   "--artifacts", "results/mlartifacts", "--out", "results/tracking/ready.json")
    assert done.returncode == 0, done.stderr[-3000:]


def start_train(work: Path, spec: dict, uri: str | None, experiment: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bnstudy", "train", "--spec", json.dumps(spec),
         "--run-dir", f"results/runs/{spec['run']}", "--tracking", tracking_json(uri, experiment),
         "--studies", "outage", "--threads", "1"],
        cwd=work, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(work: Path, spec: dict, step: int, procs, timeout: float = 120) -> None:
    path = work / "results" / "runs" / spec["run"] / "checkpoints" / f"step_{step:07d}.pt"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), "a job ended before the outage"
        assert time.monotonic() < deadline, f"no checkpoint {path.name} after {timeout}s"
        time.sleep(0.05)


def wait_for_points(count_runs, procs, timeout: float = 120) -> None:
    """Until `count_runs()` runs have train_loss points in the store (the jobs' first flush)."""
    deadline = time.monotonic() + timeout
    while count_runs() < len(procs):
        assert all(p.poll() is None for p in procs), "a job ended before the outage"
        assert time.monotonic() < deadline, f"no points in the store after {timeout}s"
        time.sleep(0.2)


def sqlite_runs_with_points(db: Path):
    """Counted with sqlite3, read-only: an MLflow client here would cache an engine on the file
    the test then deletes."""
    import sqlite3

    def count() -> int:
        try:
            con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
            try:
                return con.execute("SELECT count(DISTINCT run_uuid) FROM metrics "
                                   "WHERE key = 'train_loss'").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0
    return count


def server_runs_with_points(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    def count() -> int:
        if MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is None:
            return 0
        runs = mlflow_training_runs(uri, experiment)
        return sum(bool(metric_points(uri, r[0].info.run_id, "train_loss")) for r in runs.values())
    return count


def overhead(started: float, ended: float, summary: dict) -> float:
    """A job's life beyond its training: start-up plus the end (tracking's bounded wait)."""
    return (ended - started) - summary["wall_seconds"]


def track(work: Path, *args: str) -> tuple[int, int]:
    """Run `bnstudy track`; returns (runs repaired, metric points sent)."""
    done = bnstudy(work, "track", *args)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    m = re.search(r"(\d+) runs checked, (\d+) repaired, (\d+) metric points sent", done.stdout)
    assert m, done.stdout
    return int(m.group(2)), int(m.group(3))


def expected_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """key -> sorted (step, value) the tables say MLflow must hold for a classification run."""
    out: dict[str, list] = {}
    for row in read_rows(run_dir / "train.csv"):
        if math.isfinite(float(row["loss"])):
            out.setdefault("train_loss", []).append((int(row["step"]), float(row["loss"])))
            out.setdefault("train_accuracy", []).append((int(row["step"]), float(row["accuracy"])))
    for row in read_rows(run_dir / "eval.csv"):
        for name in ("loss", "accuracy"):
            if math.isfinite(float(row[name])):
                out.setdefault(eval_metric(row["split"], name), []).append((int(row["step"]), float(row[name])))
    return {k: sorted(v) for k, v in out.items()}


def assert_store_matches_tables(work: Path, uri: str, experiment: str, specs: list[dict],
                                live: bool = True) -> None:
    """One FINISHED MLflow run per run holding every point of the tables exactly once (no step
    twice), the params and tags; `live`: summary.json names that run and says tracking is
    complete (after `bnstudy track` it still says what the training job achieved: run folders
    are never rewritten)."""
    tracked = mlflow_training_runs(uri, experiment)
    assert sorted(tracked) == sorted(s["run"] for s in specs), sorted(tracked)
    for spec in specs:
        run_dir = work / "results" / "runs" / spec["run"]
        (run,) = tracked[spec["run"]]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert run.info.status == "FINISHED"
        if live:
            assert summary["mlflow_run_id"] == run.info.run_id
            assert summary["tracking"]["complete"] is True and summary["tracking"]["error"] is None
        assert run.data.params["optim.steps"] == str(spec["optim"]["steps"])
        assert run.data.tags["variant"] == spec["norm"]["variant"]
        assert run.data.tags["status"] == "completed"
        assert run.data.tags["study"] == "outage"
        assert run.data.tags["bnstudy.execution"] == "outage000001"
        expected = expected_points(run_dir)
        assert len(expected["train_loss"]) == spec["optim"]["steps"]
        for key, points in expected.items():
            stored = sorted((p.step, p.value) for p in metric_points(uri, run.info.run_id, key))
            assert stored == points, (spec["run"], key, len(stored), len(points))
        for key, value in summary["final"].items():
            assert [(p.step, p.value) for p in metric_points(uri, run.info.run_id, f"final_{key}")] \
                == [(0, value)]


def assert_tables_written(work: Path, spec: dict) -> dict:
    run_dir = work / "results" / "runs" / spec["run"]
    for name in TABLES:
        assert (run_dir / name).is_file(), f"{spec['run']}: no {name}"
    assert len(read_rows(run_dir / "train.csv")) == spec["optim"]["steps"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == spec["optim"]["steps"]
    return summary


# ---------------------------------------------------------------------------------------------


@e2e
def test_sqlite_store_deleted_under_two_jobs(tmp_path):
    """The default store is deleted while two jobs log to it: both finish on time with their
    tables; the store is recreated once (under the lock), the jobs continue in it and re-send at
    the end what it lost, from their tables. Deleted again after the fact, `bnstudy track`
    rebuilds it from the run folders; each time every point is there once, and a second
    `bnstudy track` sends nothing."""
    from bnstudy.tracking.store import forget_store

    specs = [long_spec(tmp_path, "vgg-batchnorm", STEPS), long_spec(tmp_path, "vgg-standard", STEPS)]
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    init_tracking(work, None, "outage")
    db = work / "results" / "mlflow.db"
    uri = f"sqlite:///{db.resolve()}"
    started = time.monotonic()
    procs = [start_train(work, spec, None, "outage") for spec in specs]
    wait_for_points(sqlite_runs_with_points(db), procs)
    db.unlink()
    outs = [p.communicate(timeout=240) for p in procs]
    ended = time.monotonic()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    for spec, (_, err) in zip(specs, outs):
        summary = assert_tables_written(work, spec)
        state = summary["tracking"]
        assert state["enabled"] is True and state["complete"] is True, state
        assert any("vanished" in note for note in state["notes"]), state
        assert "vanished during the run" in err and "metric points the store lacked" in err, err[-3000:]
        assert "tracking incomplete" not in err
        assert overhead(started, ended, summary) < 30, (ended - started, summary["wall_seconds"])
    assert sum(err.count("tracking: recreated the MLflow store") for _, err in outs) == 1, \
        [e[-1500:] for _, e in outs]
    assert_store_matches_tables(work, uri, "outage", specs)
    assert track(work) == (0, 0)

    # lost after the fact: `bnstudy track` recreates the store and every run from the folders
    db.unlink()
    forget_store(uri)  # this process's MLflow cached an engine on the deleted file
    expected = 0
    for spec in specs:
        run_dir = work / "results" / "runs" / spec["run"]
        final = json.loads((run_dir / "summary.json").read_text())["final"]
        expected += sum(map(len, expected_points(run_dir).values())) + sum(v is not None for v in final.values())
    assert track(work) == (2, expected)
    forget_store(uri)
    assert_store_matches_tables(work, uri, "outage", specs, live=False)
    before = {s["run"]: (work / "results" / "runs" / s["run"] / "summary.json").read_bytes() for s in specs}
    assert track(work) == (0, 0)
    for spec in specs:
        assert (work / "results" / "runs" / spec["run"] / "summary.json").read_bytes() == before[spec["run"]]

    # a run named otherwise in MLflow (named before names carried a run's grid values) is
    # renamed after its summary.json, once
    from mlflow.tracking import MlflowClient

    (stale,) = mlflow_training_runs(uri, "outage")[specs[0]["run"]]
    MlflowClient(tracking_uri=uri).update_run(stale.info.run_id, name="stale name")
    assert track(work) == (1, 0)
    (renamed,) = mlflow_training_runs(uri, "outage")[specs[0]["run"]]
    assert renamed.info.run_name == json.loads(before[specs[0]["run"]])["name"] != "stale name"
    assert track(work) == (0, 0)


@e2e
def test_store_missing_at_start_is_recreated_once(tmp_path):
    """The store was deleted between executions (the init_tracking marker, with its experiment
    id, is still there, so Snakemake does not rerun init_tracking): two jobs start at the same
    moment; one recreates the store under the lock, the other waits and uses it. Before, both
    ran MLflow's schema migrations at once and failed."""
    specs = [long_spec(tmp_path, "vgg-batchnorm", 60), long_spec(tmp_path, "vgg-standard", 60)]
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    init_tracking(work, None, "outage")
    db = work / "results" / "mlflow.db"
    db.unlink()
    procs = [start_train(work, spec, None, "outage") for spec in specs]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "tracking incomplete" not in err, err[-3000:]
    assert sum(err.count("was missing; recreated it") for _, err in outs) == 1, \
        [e[-1500:] for _, e in outs]
    assert_store_matches_tables(work, f"sqlite:///{db.resolve()}", "outage", specs)


@e2e
def test_server_stopped_mid_run_then_track_restores(tmp_path):
    """`mlflow server` stops mid-run: the job ends within seconds of its training, tables
    written, tracking marked incomplete; with the server back on the same store, `bnstudy track`
    completes the run without duplicating a point."""
    spec = long_spec(tmp_path, "vgg-batchnorm", STEPS)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    server = MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                          log=tmp_path / "server.log").start()
    try:
        init_tracking(work, server.url, "outage-server")
        started = time.monotonic()
        proc = start_train(work, spec, server.url, "outage-server")
        wait_for_points(server_runs_with_points(server.url, "outage-server"), [proc])
        server.stop()
        _, err = proc.communicate(timeout=240)
        ended = time.monotonic()
        assert proc.returncode == 0, err[-3000:]
        summary = assert_tables_written(work, spec)
        # start-up and a bounded end (two tries; FINISH_MAX, 15 s, at most), not the minutes of
        # MLflow's own HTTP retries (it hung for 13 minutes before)
        assert overhead(started, ended, summary) < 30, (ended - started, summary["wall_seconds"])
        state = summary["tracking"]
        assert state["complete"] is False and state["error"], state
        assert err.count("tracking incomplete:") == 1, err[-3000:]

        server = MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                              port=server.port, log=tmp_path / "server2.log").start()
        partial = mlflow_training_runs(server.url, "outage-server")[spec["run"]]
        assert len(partial) == 1 and partial[0].info.status != "FINISHED"
        repaired, sent = track(work, "--uri", server.url, "--experiment", "outage-server")
        assert repaired == 1 and sent > 0
        assert_store_matches_tables(work, server.url, "outage-server", [spec], live=False)
        assert track(work, "--uri", server.url, "--experiment", "outage-server") == (0, 0)
    finally:
        server.stop()


@e2e
def test_server_restarted_mid_run_the_end_sends_what_was_lost(tmp_path):
    """`mlflow server` stops mid-run and is back before the run ends: the batches MLflow's async
    logging failed to send meanwhile are not retried during the run; the end of the run finds
    they failed and sends their points from the tables, so the run is complete, every point once.
    (The job is paused while the server restarts, so the server is back before the end however
    slow the machine.)"""
    spec = long_spec(tmp_path, "vgg-batchnorm", STEPS)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    server = MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                          log=tmp_path / "server.log").start()
    try:
        init_tracking(work, server.url, "outage-restart")
        proc = start_train(work, spec, server.url, "outage-restart")
        wait_for_points(server_runs_with_points(server.url, "outage-restart"), [proc])
        server.stop()
        time.sleep(3)  # batches go to MLflow every second, and fail
        assert proc.poll() is None, "the job ended while the server was down"
        proc.send_signal(signal.SIGSTOP)
        server = MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                              port=server.port, log=tmp_path / "server2.log").start()
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        summary = assert_tables_written(work, spec)
        assert summary["tracking"]["complete"] is True, summary["tracking"]
        assert re.search(r"re-sent [1-9]\d* metric points the store lacked", err), err[-3000:]
        assert "tracking incomplete" not in err
        assert_store_matches_tables(work, server.url, "outage-restart", [spec])
        assert track(work, "--uri", server.url, "--experiment", "outage-restart") == (0, 0)
    finally:
        server.stop()


@e2e
def test_server_frozen_until_the_end_of_the_run(tmp_path):
    """The server hangs (SIGSTOP) mid-run and the job trains on to its end: its last batches sit
    in MLflow's async workers, which the interpreter joins at exit, and the end of the run gets no
    answer. The job still ends within seconds (two tries of the end, each ended by a request's
    3 s timeout), tables written, tracking marked incomplete once; with the server back, `bnstudy
    track` completes the run, and requests the frozen server held that land late add no point
    twice."""
    spec = long_spec(tmp_path, "vgg-batchnorm", STEPS)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    server = MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                          log=tmp_path / "server.log").start()
    try:
        init_tracking(work, server.url, "outage-frozen")
        started = time.monotonic()
        proc = start_train(work, spec, server.url, "outage-frozen")
        wait_for_points(server_runs_with_points(server.url, "outage-frozen"), [proc])
        os.killpg(server.proc.pid, signal.SIGSTOP)
        _, err = proc.communicate(timeout=240)
        ended = time.monotonic()
        assert proc.returncode == 0, err[-3000:]
        summary = assert_tables_written(work, spec)
        assert overhead(started, ended, summary) < 30, (ended - started, summary["wall_seconds"])
        state = summary["tracking"]
        assert state["complete"] is False and "timeout" in state["error"], state
        assert err.count("tracking incomplete:") == 1, err[-3000:]

        os.killpg(server.proc.pid, signal.SIGCONT)
        server.wait_healthy()
        time.sleep(1)  # the requests the frozen server holds land first
        partial = mlflow_training_runs(server.url, "outage-frozen")[spec["run"]]
        assert len(partial) == 1 and partial[0].info.status != "FINISHED"
        assert track(work, "--uri", server.url, "--experiment", "outage-frozen")[0] == 1
        assert_store_matches_tables(work, server.url, "outage-frozen", [spec], live=False)
        assert track(work, "--uri", server.url, "--experiment", "outage-frozen") == (0, 0)
    finally:
        if server.proc and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGCONT)
        server.stop()


@e2e
def test_sigterm_with_frozen_server_ends_within_seconds_and_resumes(tmp_path):
    """The server hangs (SIGSTOP: connections are accepted, never answered) and the job gets
    SIGTERM: it ends within seconds with exit status 143 and its checkpoints intact. With the
    server back, the rerun resumes from the last checkpoint, continues the same MLflow run
    without logging a step twice, and sends at the end the points the killed attempt never did."""
    from bnstudy.train.checkpoint import latest_good_checkpoint

    spec = long_spec(tmp_path, "vgg-batchnorm", STEPS)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    server = MlflowServer(store=tmp_path / "server.db", artifacts=tmp_path / "server-artifacts",
                          log=tmp_path / "server.log").start()
    run_dir = work / "results" / "runs" / spec["run"]
    try:
        # no init-tracking here: the job creates the experiment itself
        proc = start_train(work, spec, server.url, "outage-sigterm")
        wait_for_points(server_runs_with_points(server.url, "outage-sigterm"), [proc])
        wait_for_checkpoint(work, spec, 100, [proc])
        os.killpg(server.proc.pid, signal.SIGSTOP)
        time.sleep(1.5)  # the tracker is now inside a call that will not be answered
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=60)
        ended = time.monotonic() - signalled
        assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-3000:])
        assert ended < 10, f"SIGTERM took {ended:.1f}s to end the job"
        assert not (run_dir / "summary.json").exists()
        state = latest_good_checkpoint(run_dir, warn=lambda msg: None)
        assert state is not None and 100 <= state["step"] < STEPS
        last, first_run = state["step"], state["mlflow_run_id"]

        os.killpg(server.proc.pid, signal.SIGCONT)
        server.wait_healthy()
        time.sleep(1)  # the requests the frozen server holds (the killed job's batch) land first
        rerun = start_train(work, spec, server.url, "outage-sigterm")
        _, err = rerun.communicate(timeout=240)
        assert rerun.returncode == 0, err[-3000:]
        assert f"resuming {spec['run']} from step {last}" in err
        summary = assert_tables_written(work, spec)
        assert summary["tracking"]["complete"] is True, summary["tracking"]
        assert first_run is None or summary["mlflow_run_id"] == first_run
        assert_store_matches_tables(work, server.url, "outage-sigterm", [spec])
        assert track(work, "--uri", server.url, "--experiment", "outage-sigterm") == (0, 0)
    finally:
        if server.proc and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_errors_are_described_in_one_line():
    """summary.json's error and the stderr line name an error in one line: its type and first
    informative line, without the SQL statement and parameters SQLAlchemy appends (their numbers
    once read as HTTP statuses) or its "raised as a result of" preamble."""
    from bnstudy.tracking.context import describe

    readonly = RuntimeError(
        "(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush block)\n"
        "(sqlite3.OperationalError) attempt to write a readonly database\n"
        "[SQL: INSERT INTO metrics (key, value, timestamp, step) VALUES (?, ?, ?, ?)]\n"
        "[parameters: [('train_loss', 0.5033, 1795770764761, 429)]]\n"
        "(Background on this error at: https://sqlalche.me/e/20/e3q8)")
    assert describe(readonly) == "RuntimeError: (sqlite3.OperationalError) attempt to write a readonly database"
    refused = ConnectionError("\nHTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded\n"
                              "(Caused by NewConnectionError('Connection refused'))")
    assert describe(refused) == ("ConnectionError: HTTPConnectionPool(host='127.0.0.1', port=5000): "
                                 "Max retries exceeded")
    assert describe(ValueError("x" * 1000), limit=50) == "ValueError: " + "x" * 38
