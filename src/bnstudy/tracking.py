"""MLflow tracking: the only module that imports mlflow. Tracking is a view of the results on disk,
never a condition for them: a tracking outage degrades a run's tracking, it never costs a run.

One training run = one MLflow run, created through `MlflowClient` (no global active-run state, so
parallel jobs in one process tree cannot step on each other). The training loop only puts work
on a queue (`MlflowTracker`); one daemon thread imports mlflow (overlapping the start of
training), opens the run, and sends metrics with `log_batch` every few seconds. Every call has a
deadline and the tracker a total retry budget; MLflow's own HTTP retries are cut
(`MLFLOW_ENV_DEFAULTS`) so a dead server fails fast. On a failure that is not transient, or past a
deadline, the tracker goes inert: training goes on, `summary.json` records
`tracking: {"complete": false, "error": ...}`, one line on stderr says so, and `bnstudy track`
(bnstudy.sync) re-sends later what the store is missing, from the run folders.

The default SQLite store is created by `init_store` (rule init_tracking) under an exclusive lock
next to the database file (`<db>.lock`). Every process that opens a SQLite store first checks
that it holds MLflow's schema: a store that vanished is recreated once, under that lock, so
concurrent jobs never race alembic's migrations; opening takes the lock shared, so nobody opens a
half-created store. A store that vanishes under a running job is reopened (recreated) once and the
run continues in it. At the end of a finished run the tracker compares the store with the tables
just written and sends what is missing (points a killed attempt never sent before the resume, or
that a vanished store took with it), so `complete` is a fact, not a hope.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

EXECUTION_ENV = "BNSTUDY_EXECUTION"
FLUSH_SECONDS = 5.0    # metrics are sent this often (BNSTUDY_TRACKING_FLUSH_SECONDS), or
FLUSH_ROWS = 500       # once this many are pending

# Bounds, in seconds (each can be set with the environment variable BNSTUDY_TRACKING_<NAME>).
CALL_DEADLINE = 30.0   # one MLflow call, its retries on transient errors included
RETRY_BUDGET = 90.0    # all the time one tracker spends on failing calls and their retries
FINISH_STALL = 10.0    # finish() gives up once a call has waited this long for the store
FINISH_MAX = 60.0      # ... and in any case after this long
FAIL_STALL = 3.0       # fail() (a crash, SIGTERM): the same two bounds, shorter, so that a
FAIL_MAX = 8.0         # SIGTERM'd job ends within seconds whatever the store does

# MLflow's REST client retries 7 times with exponential backoff (factor 2) and a 120 s timeout per
# request: minutes per call against a dead server. Ours retry within deadlines instead. A value
# the user set wins.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# what concurrent SQLite writers and a flaky or restarting server say; matched on the message
# without SQLAlchemy's statement and parameters (their numbers once matched "503" and friends)
TRANSIENT = ("locked", "busy", "timed out", "timeout", "connection", "temporarily",
             "max retries exceeded")
TRANSIENT_STATUS = re.compile(r"(code|status)[ :=]*(429|502|503|504)\b", re.IGNORECASE)

INCOMPLETE_HINT = "results are on disk; run `bnstudy track` to re-send"


def setting(name: str, default: float) -> float:
    """A bound of this module, overridable by the environment (BNSTUDY_TRACKING_<NAME>)."""
    value = os.environ.get(f"BNSTUDY_TRACKING_{name}")
    try:
        return float(value) if value else default
    except ValueError:
        return default


def resolve_uri(tracking: dict, results: str) -> str:
    """The configured URI, or a SQLite store in the results folder."""
    if tracking.get("uri"):
        return tracking["uri"]
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def default_artifact_root(results: str | Path) -> Path:
    """Where a SQLite store's experiment keeps artifacts (the init_tracking rule's choice)."""
    return Path(results) / "mlartifacts"


def fast_fail_http() -> None:
    """Cut MLflow's HTTP retries and timeouts for this process (unless the user set them)."""
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def quiet_mlflow() -> None:
    """MLflow logs every failed call with a traceback; we report one line per outage instead
    (BNSTUDY_TRACKING_DEBUG=1 keeps MLflow's logs)."""
    if not os.environ.get("BNSTUDY_TRACKING_DEBUG"):
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def incomplete_line(reason: str) -> str:
    return f"tracking incomplete: {reason}; {INCOMPLETE_HINT}"


def describe(err: BaseException, limit: int = 400) -> str:
    """One line for an error: its type and the first informative line of its message."""
    lines = [line.strip() for line in error_text(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("(raised as a result of")] or lines
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:limit]


def error_text(err: BaseException) -> str:
    """The message of an error without SQLAlchemy's [SQL: ...] and [parameters: ...] lines."""
    lines = [line[:1000] for line in str(err).splitlines()
             if not line.lstrip().startswith(("[SQL", "[parameters", "(Background"))]
    return "\n".join(lines)


def is_transient(err: BaseException) -> bool:
    if isinstance(err, TrackingTimeout):  # a nested call already spent its deadline
        return False
    text = error_text(err)
    return any(s in text.lower() for s in TRANSIENT) or bool(TRANSIENT_STATUS.search(text))


def is_not_found(err: BaseException) -> bool:
    code = str(getattr(err, "error_code", ""))
    text = str(err).lower()
    return "RESOURCE_DOES_NOT_EXIST" in code or "not found" in text or "no run with" in text \
        or "does not exist" in text


class TrackingTimeout(RuntimeError):
    """A call kept failing transiently past its deadline (or the retry budget ran out)."""


def _retry(call, *args, deadline: float | None = None, budget=None, **kwargs):
    """Call, retrying with backoff on the errors concurrent writers and flaky servers give,
    until `deadline` (monotonic; default CALL_DEADLINE from now). `budget`, if given, is a
    callable(seconds) -> bool that charges time spent failing and says whether any is left."""
    deadline = deadline if deadline is not None else time.monotonic() + setting("CALL_DEADLINE", CALL_DEADLINE)
    delay = 0.2
    while True:
        started = time.monotonic()
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException, sqlalchemy OperationalError, requests errors
            if not is_transient(err):
                raise
            now = time.monotonic()
            if budget is not None and not budget(now - started + delay):
                raise TrackingTimeout(f"tracking retry budget spent ({describe(err)})") from err
            if now + delay > deadline:
                raise TrackingTimeout(f"no answer within the call deadline ({describe(err)})") from err
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


# ----------------------------------------------------------------------------------------------
# the SQLite store: created once, under a lock


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def store_lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def store_lock(db: Path, exclusive: bool = True):
    """flock on `<db>.lock`: exclusive to create the store, shared to open it."""
    import fcntl

    lock = store_lock_path(db)
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


def _get_or_create_experiment(client, uri: str, experiment: str, artifact_root) -> str:
    found = _retry(client.get_experiment_by_name, experiment)
    if found is not None:
        return found.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root and not uri.startswith("http") else None
    try:
        return _retry(client.create_experiment, experiment, artifact_location=location)
    except Exception as err:  # a server, and another job created it first
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
        return _retry(client.get_experiment_by_name, experiment).experiment_id


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


def experiment_id(client, uri: str, experiment: str, artifact_root=None) -> str:
    """The experiment's id, created if absent (under the store lock for a SQLite store)."""
    db = sqlite_path(uri)
    with store_lock(db) if db is not None else contextlib.nullcontext():
        return _get_or_create_experiment(client, uri, experiment, artifact_root)


def init_store(uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Create the store (schema) and the experiment if absent; return the experiment id."""
    fast_fail_http()
    client, created = open_store(uri, experiment, artifact_root)
    return created if created is not None else experiment_id(client, uri, experiment, artifact_root)


def read_marker(path: Path) -> dict:
    """results/tracking/ready.json (rule init_tracking's output), or {} if absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


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
    }


def outcome_tags(status: str, summary: dict) -> dict[str, str]:
    return {"status": status, "diverged_step": str(summary.get("diverged_step"))}


def final_metrics(summary: dict) -> dict[str, float]:
    return {f"final_{k}": float(v) for k, v in summary["final"].items() if v is not None}


def entities():
    from mlflow.entities import Metric, Param, RunTag

    return Metric, Param, RunTag


def find_runs(client, experiment_id: str, bnstudy_run: str | None = None, call=None) -> dict[str, list]:
    """bnstudy run id (tag bnstudy.run) -> MLflow runs carrying it, oldest first (one run's, or
    every run's of the experiment)."""
    call = call or _retry
    flt = f"tags.`bnstudy.run` = '{bnstudy_run}'" if bnstudy_run else ""
    out: dict[str, list] = {}
    token = None
    while True:
        page = call(client.search_runs, [experiment_id], flt, max_results=1000, page_token=token,
                    order_by=["attributes.start_time ASC"])
        for run in page:
            if run.data.tags.get("bnstudy.run"):
                out.setdefault(run.data.tags["bnstudy.run"], []).append(run)
        token = page.token
        if not token:
            return out


def now_ms() -> int:
    return int(time.time() * 1000)


def points_in_store(client, run, call=_retry) -> set[tuple[str, int]]:
    """(key, step) of every metric point of an MLflow run: one history read per key."""
    seen = set()
    for key in run.data.metrics:
        seen.update((key, m.step) for m in call(client.get_metric_history, run.info.run_id, key))
    return seen


# ----------------------------------------------------------------------------------------------
# the live tracker of a training job


class _GiveUp(Exception):
    """The tracker stops trying (the message says why)."""


class MlflowTracker:
    """The tracker `bnstudy.train.train` talks to; continues `previous_run_id` when resuming.

    The caller's thread only enqueues: `log_metrics`, `set_tags`, `finish` and `fail` never wait on
    the store beyond their bounds (finish: while the store answers, up to FINISH_MAX s, and no
    more than FINISH_STALL s on one call; fail: the same with FAIL_STALL and FAIL_MAX). `run_id`
    is None until the worker has opened the run; `state()` says whether everything reached the
    store.
    """

    def __init__(self, uri: str, experiment: str, spec: dict, run_dir: Path,
                 previous_run_id: str | None = None, studies=(), *,
                 experiment_id: str | None = None, artifact_root: Path | None = None,
                 resuming: bool | None = None, log=None):
        self.uri, self.experiment, self.spec = uri, experiment, spec
        self.run_dir, self.studies = Path(run_dir), list(studies)
        self.execution = os.environ.get(EXECUTION_ENV, "manual")
        self.run_id = previous_run_id
        self.resuming = bool(previous_run_id) if resuming is None else resuming
        self.experiment_id = experiment_id
        self.artifact_root = artifact_root
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._db = sqlite_path(uri)
        self._identity = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._inert = False
        self._error: str | None = None
        self._ended = False
        self._reopened = False
        self._spent = 0.0
        self._waiting_since: float | None = None  # a call has been outstanding since (monotonic)
        self._seen: set[tuple[str, int]] = set()
        self._last_step = None
        self._tags: dict[str, str] = {}
        self._started = time.time() - 1  # tables newer than this were written by this job
        self.notes: list[str] = []  # what happened to tracking and was repaired
        self._thread = threading.Thread(target=self._work, name="bnstudy-mlflow", daemon=True)
        self._thread.start()

    # -- the caller's side (the training loop): enqueue, bounded waits ------------------------

    def log_metrics(self, metrics: dict, step: int) -> None:
        if not self._inert and metrics:
            self._queue.put(("metrics", dict(metrics), step, int(time.time() * 1000)))

    def set_tags(self, tags: dict) -> None:
        if not self._inert:
            self._queue.put(("tags", {k: str(v) for k, v in tags.items()}))

    def finish(self, status: str, summary: dict) -> None:
        """Record the outcome (a diverged run is a finished run tagged diverged). Waits for the
        queue to drain: FINISH_MAX s at most, and not once a call has waited FINISH_STALL s for
        the store (failing, retrying or hanging)."""
        if self._inert:
            return
        self._queue.put(("end", "FINISHED", outcome_tags(status, summary), final_metrics(summary)))
        late = self._wait(setting("FINISH_STALL", FINISH_STALL), setting("FINISH_MAX", FINISH_MAX))
        if late is not None:
            self._give_up(f"the MLflow store has not answered for {late:.0f}s at the end of the run")

    def fail(self, reason: str) -> None:
        """Mark the run FAILED (a crash, or a kill by the scheduler); a resume reopens it. Waits
        as finish() does with FAIL_STALL and FAIL_MAX, and never raises."""
        try:
            if self._inert or self._done.is_set():
                return
            self._queue.put(("end", "FAILED", {"failure": reason[:5000]}, {}))
            if self._wait(setting("FAIL_STALL", FAIL_STALL), setting("FAIL_MAX", FAIL_MAX)) is not None:
                self._give_up("the run ended (failed) before MLflow took its status")
        except Exception:
            pass

    def _wait(self, stall: float, cap: float) -> float | None:
        """Until the worker is done; None, or how long the store has kept it waiting when a call
        has waited `stall` s or `cap` s have passed."""
        start = time.monotonic()
        while not self._done.wait(0.1):
            now, waiting = time.monotonic(), self._waiting_since
            if (waiting is not None and now - waiting > stall) or now - start > cap:
                return now - (waiting or start)
        return None

    def state(self) -> dict:
        """What summary.json records: did everything reach the store, and if not, why."""
        return {"enabled": True, "complete": self._ended and self._error is None,
                "run_id": self.run_id, "error": self._error, "uri": self.uri,
                "experiment": self.experiment, "studies": self.studies,
                "execution": self.execution, "git_commit": self._tags.get("git_commit"),
                "notes": list(self.notes)}

    def _give_up(self, reason: str) -> None:
        """Go inert (drop everything from now on) and say so, once."""
        with self._lock:
            if self._inert:
                return
            self._inert = True
            first = self._error is None
            self._error = self._error or reason
        if first:
            self._log(incomplete_line(reason))

    # -- the worker thread: every MLflow call ---------------------------------------------------

    def _charge(self, seconds: float) -> bool:
        """A call failed transiently: charge the retry budget; False when it is spent."""
        self._spent += seconds
        return self._spent <= setting("RETRY_BUDGET", RETRY_BUDGET)

    def _call(self, fn, *args, **kwargs):
        """One MLflow call (retries included); `_waiting_since` says for how long the store has
        owed an answer, which is what finish() bounds."""
        self._waiting_since = self._waiting_since or time.monotonic()
        result = _retry(fn, *args, budget=self._charge, **kwargs)
        self._waiting_since = None
        return result

    def _work(self) -> None:
        try:
            self._open()
            self._loop()
        except BaseException as err:  # noqa: BLE001 -- nothing here may reach the training loop
            if os.environ.get("BNSTUDY_TRACKING_DEBUG"):
                import traceback

                traceback.print_exc()
            self._give_up(str(err) if isinstance(err, (_GiveUp, TrackingTimeout)) else describe(err))
        finally:
            self._done.set()

    def _open(self) -> None:
        fast_fail_http()
        import mlflow  # noqa: F401 -- here, in the worker: the import overlaps training

        quiet_mlflow()
        self._Metric, self._Param, self._RunTag = entities()
        self.client, created = self._call(open_store, self.uri, self.experiment, self.artifact_root)
        if created is not None:
            self._log(f"tracking: the MLflow store {self._db} was missing; recreated it")
            self.experiment_id = created
        self._identity = file_identity(self._db)
        self._start_run(resume=self.resuming)

    def _experiment(self, refresh: bool = False) -> str:
        if self.experiment_id is None or refresh:
            self.experiment_id = self._call(experiment_id, self.client, self.uri, self.experiment,
                                            self.artifact_root)
        return self.experiment_id

    def _existing_run(self, resume: bool):
        """The MLflow run to continue: the checkpoint's, else (when resuming) the one tagged with
        this bnstudy run; None = create one."""
        if self.run_id:
            try:
                return self._call(self.client.get_run, self.run_id)
            except Exception as err:
                if not is_not_found(err):
                    raise
        if resume:
            found = find_runs(self.client, self._experiment(), self.spec["run"], call=self._call)
            runs = found.get(self.spec["run"], [])
            if runs:
                return runs[-1]
        return None

    def _start_run(self, resume: bool) -> None:
        run = self._existing_run(resume)
        if run is not None:
            self.run_id = run.info.run_id
            self._call(self.client.update_run, self.run_id, status="RUNNING")
            self._seen = points_in_store(self.client, run, call=self._call)
        else:
            try:
                created = self._call(self.client.create_run, self._experiment(), run_name=run_name(self.spec))
            except (TrackingTimeout, _GiveUp):
                raise
            except Exception:  # the marker's experiment id is not in this store (recreated)
                created = self._call(self.client.create_run, self._experiment(refresh=True),
                                     run_name=run_name(self.spec))
            self.run_id = created.info.run_id
            self._seen = set()
            params = [self._Param(k, v) for k, v in run_params(self.spec).items()]
            for i in range(0, len(params), 100):
                self._send(params=params[i:i + 100])
        self._tags = tags = run_tags(self.spec, self.run_dir, self.studies, self.execution)
        self._send(tags=[self._RunTag(k, v) for k, v in tags.items()])

    def _vanished(self) -> bool:
        return self._db is not None and file_identity(self._db) != self._identity

    def _send(self, **batch) -> None:
        """log_batch; if the SQLite file vanished under us (checked before each batch, so our
        engine rarely opens a connection on a file that is not the store), reopen (recreate) it
        once and continue the run there; the points before are re-sent at the end."""
        if not self._vanished():
            try:
                self._call(self.client.log_batch, self.run_id, **batch)
                return
            except TrackingTimeout:
                raise
            except Exception as err:
                if not self._vanished():
                    raise
                cause = describe(err, 120)
        else:
            cause = "the file was deleted or replaced"
        if self._reopened:
            raise _GiveUp(f"the MLflow store {self._db} vanished a second time ({cause})")
        self._reopen(cause)
        self._call(self.client.log_batch, self.run_id, **self._unseen(batch))

    def _reopen(self, cause: str) -> None:
        self._reopened = True
        note = (f"the MLflow store {self._db} vanished during the run (at step {self._last_step}: "
                f"{cause}); the run continues in a recreated store")
        self.notes.append(note)
        self._log(f"tracking: {note}; the points before are re-sent from the tables at the end")
        forget_store(self.uri)
        self.client, created = self._call(open_store, self.uri, self.experiment, self.artifact_root)
        if created is not None:
            self._log(f"tracking: recreated the MLflow store {self._db}")
        self.experiment_id = created
        self._identity = file_identity(self._db)
        self._start_run(resume=True)

    def _reconcile(self, final: dict) -> None:
        """At the end of a run its tables are on disk (train() writes them before finish()):
        send the points the store still lacks. They are the ones a killed attempt never sent
        before this resume, or that a vanished store took with it; so `complete` means it."""
        from .sync import expected_points

        try:
            fresh = (self.run_dir / "train.csv").stat().st_mtime >= self._started
        except OSError:
            fresh = False
        if not fresh:
            return
        wanted = expected_points(self.run_dir, self.spec, final)
        stamp = now_ms()
        missing = [self._Metric(k, v, stamp, step) for (k, step), v in sorted(wanted.items())
                   if (k, step) not in self._seen]
        if missing:
            count = len(missing)
            self._flush(missing)
            self.notes.append(f"re-sent {count} metric points from the tables at the end")
            self._log(f"tracking: re-sent {count} metric points the store lacked (from the tables)")

    def _unseen(self, batch: dict) -> dict:
        if "metrics" in batch:
            batch = {**batch, "metrics": [m for m in batch["metrics"] if (m.key, m.step) not in self._seen]}
        return batch

    def _flush(self, pending: list) -> None:
        fresh = [m for m in pending if (m.key, m.step) not in self._seen]
        pending.clear()
        for i in range(0, len(fresh), 1000):
            chunk = fresh[i:i + 1000]
            self._send(metrics=chunk)
            self._seen.update((m.key, m.step) for m in chunk)

    def _loop(self) -> None:
        pending: list = []
        last = time.monotonic()
        every = setting("FLUSH_SECONDS", FLUSH_SECONDS)
        while True:
            wait = max(0.0, last + every - time.monotonic()) if pending else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if self._inert:
                return
            if item is None:
                self._flush(pending)
                last = time.monotonic()
                continue
            kind = item[0]
            if kind == "metrics":
                _, metrics, step, stamp = item
                self._last_step = step
                pending.extend(self._Metric(k, float(v), stamp, step) for k, v in metrics.items())
                if len(pending) >= FLUSH_ROWS or time.monotonic() - last > every:
                    self._flush(pending)
                    last = time.monotonic()
            elif kind == "tags":
                self._flush(pending)
                self._send(tags=[self._RunTag(k, v) for k, v in item[1].items()])
            elif kind == "end":
                _, status, tags, final = item
                stamp = int(time.time() * 1000)
                pending.extend(self._Metric(k, v, stamp, 0) for k, v in final.items())
                self._flush(pending)
                if status == "FINISHED":
                    self._reconcile(final)
                self._send(tags=[self._RunTag(k, v) for k, v in tags.items()])
                self._call(self.client.set_terminated, self.run_id, status=status)
                self._ended = True
                return


# ----------------------------------------------------------------------------------------------
# analysis tables and figures: bounded, and a failure is a line on stderr, not a failed job


def quiet_mlflow_after_import() -> None:
    import mlflow  # noqa: F401

    quiet_mlflow()


def log_figures(client, exp_id: str, figures: list[Path], execution: str) -> str:
    """One run holding an execution's figures (they belong to no single training run)."""
    run = _retry(client.create_run, exp_id, run_name=f"figures ({execution})",
                 tags={"bnstudy.figures": "true", "bnstudy.execution": execution})
    for figure in figures:
        figure = Path(figure)
        _retry(client.log_artifact, run.info.run_id, str(figure), artifact_path=f"figures/{figure.parent.name}")
    _retry(client.set_terminated, run.info.run_id, status="FINISHED")
    return run.info.run_id
