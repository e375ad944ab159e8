"""The fork server (bnstudy.forkserver): a job forked from it behaves as a fresh process would:
same numbers, same streams and exit status, same response to signals; without a server the
command runs in its own process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bnstudy import forkserver
from helpers import REPO, prepared_spec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server: Linux only")


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path):
    log = tmp_path / "fork_server.log"
    handle = forkserver.start(log)
    try:
        wait_for(handle.socket.exists, what="the fork server's socket")
        yield handle, log
    finally:
        handle.stop()


def bnstudy(*args: str, socket: Path | None, **popen):
    env = {k: v for k, v in os.environ.items() if k != forkserver.SOCKET_ENV}
    if socket is not None:
        env[forkserver.SOCKET_ENV] = str(socket)
    return subprocess.Popen([sys.executable, "-m", "bnstudy", *args], env=env, cwd=popen.pop("cwd", REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def served_pids(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r"job \d+ \(pid (\d+)\)", log.read_text())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent reaps it)
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


def test_a_job_runs_in_a_child_with_the_clients_streams_and_status(server):
    handle, log = server
    proc = bnstudy("plan", "config/smoke.yaml", socket=handle.socket)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "total (shared runs once)" in out  # the child wrote to the client's stdout
    assert "[bnstudy] plan work_s=" in err      # ... and to its stderr, flushed before the exit
    assert len(served_pids(log)) == 1 and "plan" in log.read_text()

    # a user error: message and status as from a fresh process
    proc = bnstudy("train", "--spec", "{not json", "--run-dir", "x", socket=handle.socket)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "invalid JSON argument" in err
    proc = bnstudy("no-such-command", socket=handle.socket)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid choice" in err
    assert len(served_pids(log)) == 3


def test_the_job_gets_the_clients_directory_environment_and_thread_allotment(server, tmp_path):
    handle, log = server
    spec = prepared_spec(tmp_path, "dln-standard", steps=5)
    spec["runtime"]["threads"] = 0  # the job's allotment decides
    (tmp_path / "work").mkdir()
    for allotted in ("1", "2"):
        # a relative run folder resolves against the client's directory, not the server's
        env = {**os.environ, forkserver.SOCKET_ENV: str(handle.socket), "OMP_NUM_THREADS": allotted}
        proc = subprocess.run([sys.executable, "-m", "bnstudy", "train", "--spec", json.dumps(spec),
                               "--run-dir", f"run{allotted}"], env=env, cwd=tmp_path / "work",
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((tmp_path / "work" / f"run{allotted}" / "summary.json").read_text())
        # Snakemake's OMP_NUM_THREADS, read by torch when the server imported it, is applied again
        assert summary["threads"] == int(allotted)
    assert len(served_pids(log)) == 2


def test_forked_training_matches_a_fresh_process(server, tmp_path):
    handle, log = server
    spec = prepared_spec(tmp_path, "vgg-noisy_batchnorm")
    outputs = {}
    for how, socket in (("fresh", None), ("forked", handle.socket)):
        run_dir = tmp_path / how
        proc = bnstudy("train", "--spec", json.dumps(spec), "--run-dir", str(run_dir), "--threads", "1",
                       socket=socket)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs[how] = {name: pd.read_csv(run_dir / f"{name}.csv") for name in ("train", "eval", "layers", "units")}
    assert len(served_pids(log)) == 1  # the second run was forked, the first was not
    for name, table in outputs["fresh"].items():
        pd.testing.assert_frame_equal(table, outputs["forked"][name])


def long_training(tmp_path, handle):
    spec = prepared_spec(tmp_path, "vgg-standard", steps=100000)
    proc = bnstudy("train", "--spec", json.dumps(spec), "--run-dir", str(tmp_path / "run"),
                   "--threads", "1", socket=handle.socket)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_client_stops_the_job(server, tmp_path, signum):
    handle, log = server
    proc = long_training(tmp_path, handle)
    child = wait_for(lambda: served_pids(log), what="the job to be forked")[0]
    wait_for(lambda: list((tmp_path / "run" / "checkpoints").glob("step_*.pt")), what="a checkpoint")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    # as from a fresh process: the cli's SIGTERM handler exits 143; Ctrl-C ends with a
    # KeyboardInterrupt traceback and the signal (130)
    assert proc.returncode == 128 + signum, (proc.returncode, err[-2000:])
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    wait_for(lambda: not alive(child), timeout=10, what="the child to end")
    assert (tmp_path / "run" / "checkpoints").is_dir()  # what was done is kept


def test_a_killed_client_takes_its_job_with_it(server, tmp_path):
    handle, log = server
    proc = long_training(tmp_path, handle)
    child = wait_for(lambda: served_pids(log), what="the job to be forked")[0]
    assert alive(child)
    proc.kill()
    proc.wait()
    wait_for(lambda: not alive(child), timeout=20, what="the orphaned job to stop")
    assert "went away: SIGTERM" in log.read_text()


def test_without_a_server_the_command_runs_in_its_own_process(tmp_path):
    proc = bnstudy("plan", "config/smoke.yaml", socket=tmp_path / "absent.socket")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "total (shared runs once)" in out


def test_a_server_of_another_interpreter_or_checkout_is_not_used(server, monkeypatch, tmp_path):
    handle, log = server
    monkeypatch.setenv(forkserver.SOCKET_ENV, str(handle.socket))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(forkserver, "PACKAGE", "/another/checkout/bnstudy")
    assert forkserver.run_forked(["plan", "config/smoke.yaml"]) is None
    monkeypatch.setattr(forkserver, "PACKAGE", str(Path(forkserver.__file__).resolve().parent))
    monkeypatch.setattr(sys, "prefix", "/another/python")
    assert forkserver.run_forked(["plan", "config/smoke.yaml"]) is None
    assert served_pids(log) == [] and log.read_text().count("refused a job") == 2
    # the same request from this interpreter and checkout is served (its output goes to the
    # streams this process hands over: a file here)
    monkeypatch.undo()
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.run([sys.executable, "-m", "bnstudy", "plan", "config/smoke.yaml"], cwd=REPO,
                              env={**os.environ, forkserver.SOCKET_ENV: str(handle.socket)},
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 0 and len(served_pids(log)) == 1
    assert "total (shared runs once)" in (tmp_path / "out.txt").read_text()


def test_a_server_whose_sources_changed_refuses():
    request = {"prefix": sys.prefix, "package": forkserver.PACKAGE}
    assert forkserver._refusal(request, forkserver.source_stamp()) is None
    stale = [(path, mtime - 1) for path, mtime in forkserver.source_stamp()]
    assert "changed since the server started" in forkserver._refusal(request, stale)


def test_the_server_ends_when_snakemake_is_gone_and_on_sigterm(tmp_path):
    socket, log = tmp_path / "socket", tmp_path / "server.log"
    # a stand-in for Snakemake: starts the server as its child, then is killed (kill -9)
    snakemake = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"out = open({str(log)!r}, 'w')\n"
        f"subprocess.Popen([sys.executable, '-m', 'bnstudy.forkserver', {str(socket)!r}, str(os.getpid())],"
        " stdout=out, stderr=out, start_new_session=True)\n"
        "time.sleep(600)\n")])
    wait_for(socket.exists, what="the server's socket")
    snakemake.kill()
    snakemake.wait()
    wait_for(lambda: "stopped after 0 jobs" in log.read_text(), timeout=30, what="the server to stop")
    assert "Snakemake is gone" in log.read_text() and not socket.exists()

    server = subprocess.Popen([sys.executable, "-m", "bnstudy.forkserver", str(socket), str(os.getpid())],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(socket.exists, what="the server's socket")
    server.terminate()
    assert server.wait(timeout=30) == 0 and not socket.exists()
    assert "stopping: SIGTERM" in server.stdout.read()
