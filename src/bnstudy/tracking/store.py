"""The MLflow store and experiment: a SQLite store created once, under a lock, and opened under
the shared lock; the experiment created (with its kind tag) if absent (`open_store`, `connect`,
`init_store`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from .context import configure



# The kind of experiment, for MLflow 3's UI: the experiment tag `mlflow.experimentKind` (values of
# the UI's ExperimentKind enum: genai_development, custom_model_development, ...; the UI writes it
# when a user picks a kind). `custom_model_development` is "Machine learning": training runs. Set
# when the experiment is created, and on an existing one that has none. MLflow 3.17's UI (what
# the project is tested with) shows an experiment by its sidebar switch GenAI / Model training
# instead, remembered per browser, GenAI by default; an address with
# `?workflowType=machine_learning` opens the model training view (bnstudy.tracking.sync.runs_page).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
