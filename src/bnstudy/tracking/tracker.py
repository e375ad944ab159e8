"""MLflow tracking: the live tracker of a training job, and how this package uses mlflow.
Tracking is a view of the results on disk, never a condition for them: a tracking outage
degrades a run's tracking, it never costs a run.

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
import os
import sys
import threading
import time
from pathlib import Path

from ..config.spec import RunSpec
from ..files import expected_points
from .context import EXECUTION_ENV, configure, describe, incomplete_line, is_not_found, now_ms
from .runs import (
    final_metrics, find_runs, outcome_tags, points_in_store, run_name, run_params, run_tags, top_up,
)
from .store import connect, file_identity, forget_store, sqlite_path


FLUSH_SECONDS = 5.0   # a batch goes to MLflow this often (BNSTUDY_TRACKING_FLUSH_SECONDS), or
FLUSH_ROWS = 500      # once this many points are pending
MAX_PENDING = 100_000  # points kept while the run opens (beyond, the end sends from the tables)
FINISH_MAX = 15.0     # finish() waits this long for the end of the run (after mlflow's import)
FAIL_MAX = 8.0        # fail() (a crash, SIGTERM): shorter, inside Slurm's KillWait (default 30 s; 4 s lost the tag once on a loaded VM)
END_ATTEMPTS = 2      # the end of a run is tried this often (each step of it is safe to repeat)


def setting(name: str, default: float) -> float:
    """A bound of this module, overridable by the environment (BNSTUDY_TRACKING_<NAME>)."""
    try:
        return float(os.environ.get(f"BNSTUDY_TRACKING_{name}") or default)
    except ValueError:
        return default


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

    def __init__(self, uri: str, experiment: str, spec: RunSpec, run_dir: Path,
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
            runs = find_runs(client, exp, self.spec.run).get(self.spec.run, [])
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
