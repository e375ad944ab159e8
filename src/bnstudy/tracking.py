"""MLflow tracking: the only module that imports mlflow.

One training run = one MLflow run, created through `MlflowClient` (no global active-run state, so
parallel jobs in one process tree cannot step on each other). Metrics are buffered and sent with
`log_batch` every few seconds: live in the UI, and few enough writes that many jobs can share one
SQLite store. Every call retries on "database is locked" and transient HTTP errors, so parallel
jobs lose nothing. The store and experiment are created once, before jobs start
(`init_store`, the `init_tracking` rule), because concurrent first-time schema creation races.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

EXECUTION_ENV = "BNSTUDY_EXECUTION"
FLUSH_SECONDS = 5.0
FLUSH_ROWS = 500


def resolve_uri(tracking: dict, results: str) -> str:
    """The configured URI, or a SQLite store in the results folder."""
    if tracking.get("uri"):
        return tracking["uri"]
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _retry(call, *args, attempts: int = 12, **kwargs):
    """Call with exponential backoff on the errors that concurrent writers see."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException, sqlalchemy OperationalError, requests errors
            text = str(err).lower()
            transient = any(s in text for s in ("locked", "busy", "timed out", "connection",
                                                "temporarily", "503", "502", "429"))
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def init_store(uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Create the store (schema) and the experiment if absent; return the experiment id."""
    client = _client(uri)
    found = _retry(client.get_experiment_by_name, experiment)
    if found is not None:
        return found.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root and not uri.startswith("http") else None
    return _retry(client.create_experiment, experiment, artifact_location=location)


def git_commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def run_name(spec: dict) -> str:
    return f"{spec['setup']} {spec['norm']['variant']} lr={spec['optim']['lr']:g} seed={spec['seed']}"


class MlflowTracker:
    """The tracker `bnstudy.train.train` talks to; continues `previous_run_id` when resuming."""

    def __init__(self, uri: str, experiment: str, spec: dict, run_dir: Path,
                 previous_run_id: str | None = None, studies: list[str] = ()):
        from mlflow.entities import Metric, Param, RunTag

        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.client = _client(uri)
        self.pending: list = []
        self.last_flush = time.monotonic()
        exp = _retry(self.client.get_experiment_by_name, experiment)
        if exp is None:
            raise RuntimeError(f"MLflow experiment {experiment!r} does not exist in {uri}: run the "
                               f"init_tracking rule first (snakemake creates it before any job)")
        tags = {
            "variant": spec["norm"]["variant"], "lr": f"{spec['optim']['lr']:g}",
            "seed": str(spec["seed"]), "setup": spec["setup"], "dataset": spec["dataset"]["name"],
            "study": ",".join(studies), "bnstudy.run": spec["run"],
            "bnstudy.execution": os.environ.get(EXECUTION_ENV, "manual"),
            "git_commit": git_commit(Path(__file__).parent),
            "checkpoint_dir": str((Path(run_dir) / "checkpoints").resolve()),
        }
        if previous_run_id:
            self.run_id = previous_run_id
            _retry(self.client.update_run, previous_run_id, status="RUNNING")
        else:
            run = _retry(self.client.create_run, exp.experiment_id, run_name=run_name(spec))
            self.run_id = run.info.run_id
            params = [Param(k[:250], v[:6000]) for k, v in flatten(spec).items()]
            for i in range(0, len(params), 100):
                _retry(self.client.log_batch, self.run_id, params=params[i:i + 100])
        _retry(self.client.log_batch, self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def set_tags(self, tags: dict) -> None:
        _retry(self.client.log_batch, self.run_id,
               tags=[self._RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(self._Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self.pending) >= FLUSH_ROWS or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            _retry(self.client.log_batch, self.run_id, metrics=chunk)
        self.last_flush = time.monotonic()

    def finish(self, status: str, summary: dict) -> None:
        """Flush, record the outcome; a diverged run is a finished run tagged diverged."""
        self.flush()
        self.set_tags({"status": status, "diverged_step": summary.get("diverged_step")})
        final = {f"final_{k}": v for k, v in summary["final"].items() if v is not None}
        if final:
            _retry(self.client.log_batch, self.run_id,
                   metrics=[self._Metric(k, float(v), int(time.time() * 1000), 0) for k, v in final.items()])
        _retry(self.client.set_terminated, self.run_id, status="FINISHED")

    def fail(self, reason: str) -> None:
        """Mark the run FAILED (a crash, or a kill by the scheduler); a resume reopens it."""
        try:
            self.flush()
        finally:
            self.set_tags({"failure": reason[:5000]})
            _retry(self.client.set_terminated, self.run_id, status="FAILED")


def log_analysis(uri: str, run_id: str, table: Path) -> None:
    """Attach an analysis table (<analysis>-<settings hash>.csv) to its training run."""
    client = _client(uri)
    _retry(client.log_artifact, run_id, str(table), artifact_path="analysis")


def log_figures(uri: str, experiment: str, figures: list[Path]) -> str:
    """Figures belong to no single training run: one 'figures' run per pipeline execution holds
    them all (logged by one job, so parallel jobs never race to create it)."""
    client = _client(uri)
    exp = _retry(client.get_experiment_by_name, experiment)
    execution = os.environ.get(EXECUTION_ENV, "manual")
    run = _retry(client.create_run, exp.experiment_id, run_name=f"figures ({execution})",
                 tags={"bnstudy.figures": "true", "bnstudy.execution": execution})
    for figure in figures:
        figure = Path(figure)
        _retry(client.log_artifact, run.info.run_id, str(figure), artifact_path=f"figures/{figure.parent.name}")
    _retry(client.set_terminated, run.info.run_id, status="FINISHED")
    return run.info.run_id
