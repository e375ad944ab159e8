"""MLflow tracking: the only module that imports mlflow. Tracking is a view of the results on disk,
never a condition for them: a tracking outage degrades a run's tracking, it never costs a run.

One training run = one MLflow run, reached through `MlflowClient` (no global active run, so
parallel jobs in one process tree cannot step on each other).

MLflow's own means (set up by `configure`; a value the user set in the environment wins):
- sending in the background: `log_batch(..., synchronous=False)` queues a batch for MLflow's
  logging thread and worker pool; `set_terminated` drains that queue before it marks the run;
- HTTP timeouts and retries (MLFLOW_HTTP_REQUEST_TIMEOUT, _MAX_RETRIES, _BACKOFF_FACTOR); a
  locked SQLite file is waited for (busy_timeout) and a deadlocked write retried by MLflow;
- a point sent twice is stored once: MLflow's SQL store keys a point by (key, step, value,
  timestamp). So every send here is safe to repeat, also after a request that timed out and
  may still land: live points keep the timestamp they were logged with, re-sent ones get the
  run's end.

By hand, only what MLflow lacks:
- a bound on the end of a run. `set_terminated`'s drain and `RunOperations.wait()` have no
  timeout, and MLflow's async workers are not daemon threads: the interpreter joins them at exit
  (mlflow/mlflow#20575). So `finish` and `fail` run the end in a daemon thread (tried up to
  END_ATTEMPTS times) and wait for it FINISH_MAX / FAIL_MAX s, and a training job's requests get
  no retries and a 3 s timeout (`LIVE_SETTINGS`): what is still in MLflow's pool when the job
  exits ends within seconds, whatever the server does;
- completeness: a batch MLflow failed to send is not retried during the run. At the end of a
  finished run, once MLflow's queue is drained, the tracker asks it whether every batch went
  through (`RunOperations.wait()`); if one did not, or the run was resumed (a killed attempt's
  last points) or its store vanished, it compares the store with the tables just written and
  sends what the store lacks. So `complete` is a fact, not a hope. If the store stays away,
  `summary.json` records `tracking: {"complete": false, "error": ...}`, one line on stderr says
  so, and `bnstudy track` (bnstudy.tracking.sync) re-sends later what the store lacks, from the run
  folders;
- the SQLite store created once, under a lock: MLflow creates a missing SQLite file and runs
  alembic's migrations in every process that opens it, so concurrent jobs would race them.
  `open_store` creates it under an exclusive lock next to the file (`<db>.lock`), under a private
  name renamed into place, and opens it under the shared lock. A store that vanishes under a
  running job is reopened (recreated) and the run continues in it;
- batching: `log_metrics` appends to a list; a batch goes to MLflow every FLUSH_SECONDS (one
  `log_batch(synchronous=False)` call costs ~0.15 ms: once per step, a GPU run would feel it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..tables.files import expected_points

EXECUTION_ENV = "BNSTUDY_EXECUTION"
FLUSH_SECONDS = 5.0   # a batch goes to MLflow this often (BNSTUDY_TRACKING_FLUSH_SECONDS), or
FLUSH_ROWS = 500      # once this many points are pending
MAX_PENDING = 100_000  # points kept while the run opens (beyond, the end sends from the tables)
FINISH_MAX = 15.0     # finish() waits this long for the end of the run (after mlflow's import)
FAIL_MAX = 4.0        # fail() (a crash, SIGTERM): shorter, so a killed job ends within seconds
END_ATTEMPTS = 2      # the end of a run is tried this often (each step of it is safe to repeat)

# MLflow's defaults (7 retries, backoff factor 2, 120 s per request) spend minutes on one call to
# a dead server. A training job: no retries and 3 s per request, so a request in MLflow's pool
# holds the job's exit 3 s at most (what failed is sent at the end, from the tables). The
# commands that send in bulk (`bnstudy track`, init-tracking): MLflow's retries, after 0, 2 and
# 4 s (plus jitter), on refused connections, timeouts and 408/429/5xx.
LIVE_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
BULK_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

INCOMPLETE_HINT = "results are on disk; run `bnstudy track` to re-send"

# The kind of experiment, for MLflow 3's UI: the experiment tag `mlflow.experimentKind` (values of
# the UI's ExperimentKind enum: genai_development, custom_model_development, ...; the UI writes it
# when a user picks a kind). `custom_model_development` is "Machine learning": training runs. Set
# when the experiment is created, and on an existing one that has none. MLflow 3.17's UI (what
# the project is tested with) shows an experiment by its sidebar switch GenAI / Model training
# instead, remembered per browser, GenAI by default; an address with
# `?workflowType=machine_learning` opens the model training view (bnstudy.tracking.sync.runs_page).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Each run is tagged `study` = the studies it serves, comma-separated, and `study.<name>` = "true"
# per study: a run shared by two studies is in both groups when the runs table is grouped (or
# filtered: tags.`study.<name>` = 'true') by one study's tag.
STUDY_TAG_PREFIX = "study."


def setting(name: str, default: float) -> float:
    """A bound of this module, overridable by the environment (BNSTUDY_TRACKING_<NAME>)."""
    try:
        return float(os.environ.get(f"BNSTUDY_TRACKING_{name}") or default)
    except ValueError:
        return default


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


# ----------------------------------------------------------------------------------------------
# the SQLite store: created once, under a lock


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


@contextlib.contextmanager
def store_lock(db: Path, exclusive: bool = True):
    """flock on `<db>.lock`: exclusive to create the store, shared to open it."""
    import fcntl

    lock = db.with_name(db.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sqlite_ready(db: Path) -> bool:
    """The file exists and holds MLflow's schema (alembic stamped a version). Read-only: never
    creates the file."""
    try:
        if not db.is_file() or db.stat().st_size == 0:
            return False
        con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        try:
            row = con.execute("SELECT count(*) FROM alembic_version").fetchone()
            exp = con.execute("SELECT count(*) FROM sqlite_master WHERE type='table' "
                              "AND name='experiments'").fetchone()
            return bool(row and row[0] and exp and exp[0])
        finally:
            con.close()
    except (sqlite3.Error, OSError):
        return False


def file_identity(path: Path | None):
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except (OSError, TypeError):
        return None


def forget_store(uri: str) -> None:
    """Drop MLflow's cached store and engine for `uri`, so the next client opens the file anew
    (after the file was deleted or replaced). Private MLflow caches: best effort."""
    with contextlib.suppress(Exception):
        from mlflow.tracking._tracking_service import utils

        utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _mark_kind(client, found) -> str:
    """The id of an existing experiment, given the EXPERIMENT_KIND tag if it has none (a kind
    someone chose is kept). Best effort: a cosmetic tag never fails a job."""
    if not (found.tags or {}).get(EXPERIMENT_KIND_TAG):
        with contextlib.suppress(Exception):
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def _get_or_create_experiment(client, uri: str, experiment: str, artifact_root) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return _mark_kind(client, found)
    location = Path(artifact_root).resolve().as_uri() if artifact_root and not uri.startswith("http") else None
    try:
        return client.create_experiment(experiment, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception as err:  # a server, and another job created it first
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
        return _mark_kind(client, client.get_experiment_by_name(experiment))


def open_store(uri: str, experiment: str, artifact_root=None) -> tuple[object, str | None]:
    """A client for `uri`, the store created first if it is a SQLite file that is missing (or
    lacks MLflow's schema): once, under the exclusive store lock, with the experiment. Returns
    (client, experiment id if this call created the store, else None)."""
    db = sqlite_path(uri)
    if db is None:
        return _client(uri), None
    with store_lock(db, exclusive=False):
        if sqlite_ready(db):
            return _client(uri), None  # MLflow opens (and checks) the schema now, shared-locked
    with store_lock(db, exclusive=True):
        if sqlite_ready(db):
            return _client(uri), None
        # built under a private name, then renamed into place: a job whose engine still points at
        # the vanished file can open (and create) a file at the real path at any moment, and
        # must never see, or write into, a half-created schema
        tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
        tmp.unlink(missing_ok=True)
        tmp_uri = f"sqlite:///{tmp}"
        try:
            exp = _get_or_create_experiment(_client(tmp_uri), tmp_uri, experiment, artifact_root)
            forget_store(tmp_uri)
            os.replace(tmp, db)
        finally:
            forget_store(tmp_uri)
            tmp.unlink(missing_ok=True)
        forget_store(uri)
        return _client(uri), exp


def connect(uri: str, experiment: str, artifact_root=None, live: bool = False):
    """Configure and import mlflow, open the store (see `open_store`) and the experiment (created
    if absent, under the store lock for a SQLite store); returns (client, experiment id, whether
    this call created the store)."""
    configure(live)
    client, created = open_store(uri, experiment, artifact_root)
    if created is not None:
        return client, created, True
    db = sqlite_path(uri)
    with store_lock(db) if db is not None else contextlib.nullcontext():
        return client, _get_or_create_experiment(client, uri, experiment, artifact_root), False


def init_store(uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Create the store (schema) and the experiment if absent; return the experiment id."""
    return connect(uri, experiment, artifact_root)[1]


# ----------------------------------------------------------------------------------------------
# what a run looks like in MLflow (shared by the live tracker and `bnstudy track`)


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
    """The default display name (`bnstudy train --name` overrides it)."""
    return f"{spec['setup']} {spec['norm']['variant']} lr={spec['optim']['lr']:g} seed={spec['seed']}"


def run_params(spec: dict) -> dict[str, str]:
    return {k[:250]: v[:6000] for k, v in flatten(spec).items()}


def run_tags(spec: dict, run_dir: Path, studies, execution: str) -> dict[str, str]:
    return {
        "variant": spec["norm"]["variant"], "lr": f"{spec['optim']['lr']:g}",
        "seed": str(spec["seed"]), "setup": spec["setup"], "dataset": spec["dataset"]["name"],
        "study": ",".join(studies), "bnstudy.run": spec["run"],
        "bnstudy.execution": execution,
        "git_commit": git_commit(Path(__file__).parent),
        "checkpoint_dir": str((Path(run_dir) / "checkpoints").resolve()),
        **study_tags(studies),
    }


def study_tags(studies) -> dict[str, str]:
    """One tag per study the run serves (`study.<name>` = "true"; see STUDY_TAG_PREFIX)."""
    return {f"{STUDY_TAG_PREFIX}{study}": "true" for study in studies}


def outcome_tags(status: str, summary: dict) -> dict[str, str]:
    return {"status": status, "diverged_step": str(summary.get("diverged_step"))}


def final_metrics(summary: dict) -> dict[str, float]:
    return {f"final_{k}": float(v) for k, v in summary["final"].items() if v is not None}


def find_runs(client, experiment_id: str, bnstudy_run: str | None = None) -> dict[str, list]:
    """bnstudy run id (tag bnstudy.run) -> MLflow runs carrying it, oldest first (one run's, or
    every run's of the experiment)."""
    flt = f"tags.`bnstudy.run` = '{bnstudy_run}'" if bnstudy_run else ""
    out: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], flt, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        for run in page:
            if run.data.tags.get("bnstudy.run"):
                out.setdefault(run.data.tags["bnstudy.run"], []).append(run)
        token = page.token
        if not token:
            return out


def points_in_store(client, run) -> set[tuple[str, int]]:
    """(key, step) of every metric point of an MLflow run: one history read per key."""
    seen = set()
    for key in run.data.metrics:
        seen.update((key, m.step) for m in client.get_metric_history(run.info.run_id, key))
    return seen


def top_up(client, run, params: dict, tags: dict, outcome: dict,
           points: dict[tuple[str, int], float], stamp: int) -> tuple[int, list[tuple[str, int]]]:
    """Send what the MLflow `run` lacks: params and `tags` it does not have, `outcome` tags whose
    value differs, metric points whose (key, step) it does not hold, timestamped `stamp`. Returns
    (the number of writes, the (key, step) of the points sent).

    Safe to repeat, also after a request that timed out and may still land: MLflow's SQL store
    keeps one point per (key, step, value, timestamp), so the same point sent twice with the same
    `stamp` (the run's end) is stored once."""
    from mlflow.entities import Metric, Param, RunTag

    run_id, writes = run.info.run_id, 0
    missing_params = [Param(k, v) for k, v in params.items() if k not in run.data.params]
    missing_tags = {k: v for k, v in tags.items() if k not in run.data.tags}
    missing_tags.update({k: v for k, v in outcome.items() if run.data.tags.get(k) != v})
    if missing_params or missing_tags:
        client.log_batch(run_id, params=missing_params,
                         tags=[RunTag(k, v) for k, v in missing_tags.items()])
        writes += 1
    held = points_in_store(client, run) if points else set()
    fresh = [Metric(k, v, stamp, step) for (k, step), v in sorted(points.items()) if (k, step) not in held]
    for i in range(0, len(fresh), 1000):
        client.log_batch(run_id, metrics=fresh[i:i + 1000])
        writes += 1
    return writes, [(m.key, m.step) for m in fresh]


# ----------------------------------------------------------------------------------------------
# the live tracker of a training job


class MlflowTracker:
    """The tracker `bnstudy.train.loop.train` talks to; continues `previous_run_id` when resuming.

    The training thread never waits on the store: `log_metrics` appends, and hands MLflow's async
    queue a batch every FLUSH_SECONDS. A daemon thread imports mlflow and opens the run meanwhile
    (again if the SQLite file vanishes). `finish` and `fail` wait for the end of the run at most
    FINISH_MAX / FAIL_MAX s once mlflow is imported. `run_id` is the checkpoint's until the run
    is open; `state()` says whether everything reached the store.
    """

    def __init__(self, uri: str, experiment: str, spec: dict, run_dir: Path,
                 previous_run_id: str | None = None, studies=(), *, name: str | None = None,
                 artifact_root: Path | None = None, resuming: bool | None = None, log=None):
        self.uri, self.experiment, self.spec = uri, experiment, spec
        self.run_dir, self.studies = Path(run_dir), list(studies)
        self.name = name or run_name(spec)
        self.execution = os.environ.get(EXECUTION_ENV, "manual")
        self.artifact_root = artifact_root
        self.run_id = previous_run_id
        self.resuming = bool(previous_run_id) if resuming is None else resuming
        self.notes: list[str] = []  # what happened to tracking and was repaired
        self.tags: dict[str, str] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._db = sqlite_path(uri)
        self._identity = None  # the SQLite file the run was opened in
        self._live = None  # (client, run id) while batches go to MLflow as training goes
        self._seen: set[tuple[str, int]] = set()  # what the store held when the run was opened
        self._pending: list[tuple] = []  # (key, value, timestamp, step) not handed to MLflow yet
        self._handed: list = []  # MLflow's RunOperations of the batches handed to its queue
        # the store may lack points the tables hold: a resume (the killed attempt's last ones), a
        # dropped or failed batch, a reopened store; the end then compares the two
        self._gaps = self.resuming
        self._flushed, self._every = time.monotonic(), setting("FLUSH_SECONDS", FLUSH_SECONDS)
        self._created_ms = now_ms()  # the run's start in MLflow, not the moment it could be opened
        self._step = None
        self._error: str | None = None
        self._ended = False
        self._imported = threading.Event()
        self._opener = self._thread(self._open_live)

    @staticmethod
    def _thread(target, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name="bnstudy-mlflow", daemon=True)
        thread.start()
        return thread

    # -- the training thread: append, hand MLflow a batch now and then ---------------------------

    def log_metrics(self, metrics: dict, step: int) -> None:
        stamp, self._step = now_ms(), step
        self._pending.extend((k, float(v), stamp, step) for k, v in metrics.items())
        now = time.monotonic()
        if now - self._flushed >= self._every or len(self._pending) >= FLUSH_ROWS:
            self._flushed = now
            self._flush()

    def _flush(self) -> None:
        if self._live is not None and self._vanished():
            self._live = None
            self._note_vanished()
            self._opener = self._thread(self._open_live, True)
        if self._live is None:
            # kept while the run opens (they go once it is open), else dropped: the end of the
            # run sends from the tables what the store lacks
            if not self._opener.is_alive() or len(self._pending) > MAX_PENDING:
                self._pending.clear()
                self._gaps = True
            return
        from mlflow.entities import Metric

        client, run_id = self._live
        batch = [Metric(k, v, t, s) for k, v, t, s in self._pending if (k, s) not in self._seen]
        self._pending.clear()
        try:
            self._handed.append(client.log_batch(run_id, metrics=batch, synchronous=False))
        except Exception:  # nothing here may reach the training loop; the end re-sends
            self._live, self._gaps = None, True

    def _vanished(self) -> bool:
        return self._db is not None and file_identity(self._db) != self._identity

    def _note_vanished(self) -> None:
        self._gaps = True
        note = (f"the MLflow store {self._db} vanished during the run (at step {self._step}); "
                f"the run continues in a recreated store")
        self.notes.append(note)
        self._log(f"tracking: {note}; the points before are re-sent from the tables at the end")

    # -- opening the run (the opener thread; again by the end of the run if it failed) -----------

    def _open_live(self, reopen: bool = False) -> None:
        """The opener thread: import mlflow (overlapping training) and open the run. A failure
        leaves live tracking off; the end of the run tries again, and says why."""
        try:
            configure(live=True)
            self._imported.set()
            self._open(reopen)
        except Exception:
            pass
        finally:
            self._imported.set()

    def _open(self, reopen: bool = False) -> None:
        """Open the run, the store created first if it is a missing SQLite file: the checkpoint's
        run, else (when resuming) the one tagged with this bnstudy run, else a new one."""
        from mlflow.entities import Param, RunTag

        if reopen:
            forget_store(self.uri)  # MLflow's cached engine points at the vanished file
        client, exp, created = connect(self.uri, self.experiment, self.artifact_root, live=True)
        if created:
            self._log(f"tracking: recreated the MLflow store {self._db}" if reopen else
                      f"tracking: the MLflow store {self._db} was missing; recreated it")
        run = self._existing_run(client, exp)
        self.tags = run_tags(self.spec, self.run_dir, self.studies, self.execution)
        if run is None:
            run = client.create_run(exp, start_time=self._created_ms, run_name=self.name, tags=self.tags)
            self.run_id = run.info.run_id  # from now on, a retry continues this run
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(self.spec).items()])
            self._seen = set()
        else:
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
            self._seen = points_in_store(client, run)
        self._identity = file_identity(self._db)
        self._live = (client, self.run_id)

    def _existing_run(self, client, exp: str):
        if self.run_id:
            try:
                return client.get_run(self.run_id)
            except Exception as err:
                if not is_not_found(err):
                    raise
        if self.resuming:
            runs = find_runs(client, exp, self.spec["run"]).get(self.spec["run"], [])
            if runs:
                return runs[-1]
        return None

    def _ensure_open(self):
        """(client, run id) of the open run, for the end of the run."""
        self._opener.join()
        if self._live is not None and self._vanished():
            self._live = None
            self._note_vanished()
        if self._live is None:
            self._open(reopen=self._identity is not None)
        return self._live

    # -- the end of the run: bounded ---------------------------------------------------------------

    def finish(self, status: str, summary: dict) -> None:
        """Record the outcome (a diverged run is a finished run tagged diverged) once the store
        holds everything the tables hold. Waits FINISH_MAX s at most."""
        self._pending.extend((k, v, now_ms(), 0) for k, v in final_metrics(summary).items())
        self._end(setting("FINISH_MAX", FINISH_MAX), self._finish, status, summary)

    def fail(self, reason: str) -> None:
        """Mark the run FAILED (a crash, or a kill by the scheduler); a resume reopens it. Waits
        FAIL_MAX s at most, and never raises."""
        with contextlib.suppress(Exception):
            self._end(setting("FAIL_MAX", FAIL_MAX), self._fail, reason)

    def _finish(self, status: str, summary: dict) -> None:
        client, run_id = self._ensure_open()
        self._send_pending(client, run_id)
        client.set_terminated(run_id, status="FINISHED", end_time=summary.get("ended_ms"))
        # MLflow's queue is drained now. If every batch went through, the store holds what the
        # tables hold (the loop logs what it writes); else the top-up compares them, reading the
        # run's history, and sends what was lost
        gaps = self._gaps or not self._all_handed_sent()
        wanted = expected_points(self.run_dir, self.spec, final_metrics(summary)) if gaps else {}
        _, sent = top_up(client, client.get_run(run_id), run_params(self.spec), self.tags,
                         outcome_tags(status, summary), wanted, summary.get("ended_ms") or now_ms())
        if sent:
            self.notes.append(f"re-sent {len(sent)} metric points from the tables at the end")
            self._log(f"tracking: re-sent {len(sent)} metric points the store lacked (from the tables)")

    def _send_pending(self, client, run_id: str) -> None:
        """What was never handed to MLflow (the last seconds, the final metrics; everything if the
        run opened only now). A retried end sends the same points again, timestamps included: the
        store keeps one of each (see `top_up`)."""
        from mlflow.entities import Metric

        client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in self._pending
                                          if (k, s) not in self._seen])
        self._pending.clear()

    def _all_handed_sent(self) -> bool:
        """Whether every batch handed to MLflow's queue was stored (call once it is drained:
        `wait` then returns at once, and raises if the batch failed)."""
        try:
            for operations in self._handed:
                if operations is not None:  # None: an empty batch
                    operations.wait()
            return True
        except Exception:
            return False

    def _fail(self, reason: str) -> None:
        client, run_id = self._ensure_open()
        client.set_tag(run_id, "failure", reason[:5000])
        client.set_terminated(run_id, status="FAILED")

    def _end(self, bound: float, work, *args) -> None:
        """Run `work` in a daemon thread: up to END_ATTEMPTS times, 1 s apart (a passing error),
        within `bound` s (counted once mlflow is imported: that is local work, not the
        store's)."""
        if self._ended or self._error:
            return
        self._imported.wait(bound)
        deadline = time.monotonic() + bound
        failure = [f"no answer within {bound:.0f}s"]

        def attempts():
            for attempt in range(END_ATTEMPTS):
                try:
                    work(*args)
                    self._ended = True
                    return
                except Exception as err:
                    failure[0] = describe(err)
                if attempt + 1 == END_ATTEMPTS or time.monotonic() + 1 > deadline:
                    return
                time.sleep(1)

        self._thread(attempts).join(max(0.0, deadline - time.monotonic()))
        if not self._ended:
            self._error = f"the MLflow store did not take the end of the run ({failure[0]})"
            self._log(incomplete_line(self._error))

    def state(self) -> dict:
        """What summary.json records: did everything reach the store, and if not, why."""
        return {"enabled": True, "complete": self._ended and self._error is None,
                "run_id": self.run_id, "error": self._error, "uri": self.uri,
                "experiment": self.experiment, "studies": self.studies,
                "execution": self.execution, "git_commit": self.tags.get("git_commit"),
                "notes": list(self.notes)}

