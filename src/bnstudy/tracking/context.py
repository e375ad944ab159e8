"""Tracking settings and context, without mlflow: the store's URI, MLflow's request settings for
this process (`configure`, which imports mlflow), the init_tracking marker, the tracking context
the Snakefile's `onstart` writes for the training jobs, and one-line descriptions of an outage.

The Snakemake process imports this module (never mlflow) to write the context.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path



EXECUTION_ENV = "BNSTUDY_EXECUTION"


# MLflow's defaults (7 retries, backoff factor 2, 120 s per request) spend minutes on one call to
# a dead server. A training job: no retries and 3 s per request, so a request in MLflow's pool
# holds the job's exit 3 s at most (what failed is sent at the end, from the tables). The
# commands that send in bulk (`bnstudy track`, init-tracking): MLflow's retries, after 0, 2 and
# 4 s (plus jitter), on refused connections, timeouts and 408/429/5xx.
LIVE_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
BULK_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

INCOMPLETE_HINT = "results are on disk; run `bnstudy track` to re-send"


def configure(live: bool) -> None:
    """MLflow's settings for this process (unless the user set them), then import mlflow and
    quiet it: MLflow logs every failed call with a traceback, we report one line per outage
    (BNSTUDY_TRACKING_DEBUG=1 keeps MLflow's logs). Its import sets its loggers' levels, hence
    after."""
    for key, value in (LIVE_SETTINGS if live else BULK_SETTINGS).items():
        os.environ.setdefault(key, value)
    import mlflow  # noqa: F401

    if not os.environ.get("BNSTUDY_TRACKING_DEBUG"):
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def resolve_uri(tracking: dict, results: str) -> str:
    """The configured URI, or a SQLite store in the results folder."""
    if tracking.get("uri"):
        return tracking["uri"]
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def default_artifact_root(results: str | Path) -> Path:
    """Where a SQLite store's experiment keeps artifacts (the init_tracking rule's choice)."""
    return Path(results) / "mlartifacts"


def read_marker(path: Path) -> dict:
    """results/tracking/ready.json (rule init_tracking's output), or {} if absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# How tracking settings reach a training job: not through its params, nor through any input.
# The settings and a run's labels (display name, the studies that use it) decide how MLflow shows
# the run, not what the run is: as params they made Snakemake retrain every run when the
# experiment was renamed, and a shared run when a new study used it. As a declared input they
# would too (a rerun producer reruns its consumers); declared ancient(), Snakemake 9 then skips
# evaluating everything downstream of the consumers (snakemake/snakemake#4166: a new study's
# tables went unplanned). So the Snakefile's `onstart` writes them to a context file before any
# job starts (never on a dry run), and the jobs find it through the environment, which they
# inherit (locally and through sbatch's export), like EXECUTION_ENV.
CONTEXT_ENV = "BNSTUDY_TRACKING_CONTEXT"


def context_path(results: str | Path) -> Path:
    """Where the Snakefile's `onstart` writes the tracking context of an execution."""
    return Path(results).resolve() / "tracking" / "context.json"


def write_context(path: Path, tracking: dict, runs: dict[str, dict]) -> None:
    """The tracking settings (`tracking` config plus `results`) and {run: {name, studies}}."""
    from ..atomic import atomic_write

    text = json.dumps({"tracking": tracking, "runs": runs}, indent=1, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_context(path: Path, run: str) -> tuple[dict, str | None, list[str]] | None:
    """(tracking settings, display name, studies) of `run` from a context file; None if there is
    none (Snakemake ran with --no-hooks). A run the file does not list gets the default name."""
    try:
        context = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RuntimeError(f"tracking context {path} is unreadable ({err}); the next snakemake run "
                           f"writes it again") from None
    labels = context.get("runs", {}).get(run, {})
    return context.get("tracking", {"enabled": False}), labels.get("name"), list(labels.get("studies", []))


def incomplete_line(reason: str) -> str:
    return f"tracking incomplete: {reason}; {INCOMPLETE_HINT}"


def describe(err: BaseException, limit: int = 400) -> str:
    """One line for an error: its type and the first informative line of its message (without
    SQLAlchemy's [SQL: ...], [parameters: ...] and background lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()
             and not line.lstrip().startswith(("[SQL", "[parameters", "(Background"))]
    lines = [line for line in lines if not line.startswith("(raised as a result of")] or lines
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:limit]


def is_not_found(err: BaseException) -> bool:
    code = str(getattr(err, "error_code", ""))
    text = str(err).lower()
    return "RESOURCE_DOES_NOT_EXIST" in code or "not found" in text or "no run with" in text \
        or "does not exist" in text


def now_ms() -> int:
    return int(time.time() * 1000)
