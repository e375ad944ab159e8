"""Start an MLflow tracking server (REST API + UI) on loopback, wait until it answers, stop it.

Used by tests/test_mlflow.py (server mode) and tests/test_browser.py (the UI), and usable by hand:

    .venv/bin/python tests/harness/mlflow_server.py --store results/mlflow.db \
        --artifacts results/mlartifacts [--port 5000]
    # prints the URL (http://127.0.0.1:PORT), serves until Ctrl-C

In Python:

    with MlflowServer(store=tmp / "mlflow.db", artifacts=tmp / "artifacts") as server:
        server.url   # http://127.0.0.1:PORT

The server runs `mlflow server` from the interpreter's environment (the project venv), bound to
127.0.0.1 only, in its own process group so stop() ends it and its workers (and only them).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def store_uri(store: str | Path) -> str:
    """A path to a SQLite file becomes sqlite:///<abs path>; URIs pass through."""
    text = str(store)
    return text if "://" in text else f"sqlite:///{Path(text).resolve()}"


class MlflowServer:
    def __init__(self, store: str | Path, artifacts: str | Path, host: str = "127.0.0.1",
                 port: int | None = None, log: str | Path | None = None, workers: int = 1,
                 startup_timeout: float = 90.0):
        self.backend = store_uri(store)
        self.artifacts = Path(artifacts).resolve()
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log_path = Path(log) if log else None
        self.workers, self.startup_timeout = workers, startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log_fh = None

    def command(self) -> list[str]:
        return [MLFLOW, "server", "--backend-store-uri", self.backend,
                "--artifacts-destination", str(self.artifacts), "--serve-artifacts",
                "--host", self.host, "--port", str(self.port), "--workers", str(self.workers)]

    def start(self) -> "MlflowServer":
        self.artifacts.mkdir(parents=True, exist_ok=True)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_path, "w")
        out = self._log_fh or subprocess.DEVNULL
        env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200 and resp.read().strip() == b"OK"
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode} before it "
                                   f"was healthy:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.3)
        raise TimeoutError(f"mlflow server at {self.url} not healthy after "
                           f"{self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        if self._log_fh:
            self._log_fh.flush()
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log: pass log=PATH)"

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            # the server's own process group: the mlflow CLI plus its uvicorn/gunicorn workers
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="results/mlflow.db",
                        help="SQLite file or backend store URI (default: results/mlflow.db)")
    parser.add_argument("--artifacts", default="results/mlartifacts",
                        help="where the server keeps uploaded artifacts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    server = MlflowServer(args.store, args.artifacts, args.host, args.port)
    server.start()
    print(server.url, flush=True)
    try:
        while server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
