"""The MLflow store: its URI, SQLite set-up for concurrent writers, and the one retry.

The store defaults to the project's own ``mlruns/`` (SQLite database + artifact folder),
resolved to an absolute path so DVC's temporary experiment copies log to the same store;
``MLFLOW_TRACKING_URI`` overrides it.

Several processes may write to one SQLite store at once (parallel sweep jobs, a pipeline beside a
sweep). The store is switched to WAL (readers never block the writer), every connection waits
for locks instead of failing at once, schema creation is serialised by a file lock, and writes
that still meet "database is locked" are retried with backoff by :func:`retrying`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf import interrupts
from imgclf.lineage import project_root

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
SQLITE_BUSY_TIMEOUT_S = 60.0
LOCK_RETRIES = 8

_T = TypeVar("_T")
_prepared_stores: set[str] = set()


def store_dir() -> Path:
    """The project's own MLflow store folder (``<root>/mlruns``)."""
    return project_root() / "mlruns"


def default_tracking_uri() -> str:
    """SQLite URI of the project's own store."""
    return f"sqlite:///{store_dir() / DB_NAME}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's own store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def configure(experiment_name: str | None = None) -> str | None:
    """Point MLflow at the store and select ``experiment_name``; return its id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("sqlite:///"):
        _prepare_sqlite(uri)
    if experiment_name is None:
        return None
    client = MlflowClient()
    exp = retrying(client.get_experiment_by_name, experiment_name)
    if exp is None:
        artifact_location = None
        if uri == default_tracking_uri():
            artifact_location = (store_dir() / "artifacts").as_uri()
        try:
            exp_id = retrying(
                client.create_experiment, experiment_name, artifact_location=artifact_location
            )
        except MlflowException:  # created concurrently by another process
            exp = retrying(client.get_experiment_by_name, experiment_name)
            assert exp is not None
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    retrying(mlflow.set_experiment, experiment_id=exp_id)
    return exp_id


def _prepare_sqlite(uri: str) -> None:
    """Once per process and store: WAL mode, lock waits, and the schema created by one process.

    WAL is a property of the database file, so setting it once makes every later connection
    (also MLflow's own, and ``mlflow ui``'s) use it. Without the file lock, processes that open a
    new store at the same moment all try to create its tables and the losers fail.
    """
    if uri in _prepared_stores:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    _install_busy_timeout()
    with (db.parent / f".{db.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            con = sqlite3.connect(db, timeout=SQLITE_BUSY_TIMEOUT_S)
            try:
                con.execute("PRAGMA journal_mode=WAL")
            finally:
                con.close()
            retrying(MlflowClient(uri).search_experiments, max_results=1)  # creates the tables
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _prepared_stores.add(uri)


def _install_busy_timeout() -> None:
    """Make every SQLite connection SQLAlchemy opens wait for a lock instead of failing.

    MLflow sets a busy timeout inside its sessions, but not on the connections it uses for
    schema checks and migrations; a pool-level listener covers them all.
    """
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if not event.contains(Pool, "connect", _sqlite_on_connect):
        event.listen(Pool, "connect", _sqlite_on_connect)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retrying(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call ``fn``, retrying with jittered backoff while SQLite reports a lock.

    The busy timeout covers most waits, but SQLite returns "locked" at once, without waiting,
    when a read transaction cannot be upgraded to a write because another process wrote first.
    A failed write is rolled back, so trying again is safe.
    """
    for attempt in range(LOCK_RETRIES):
        try:
            with interrupts.shielded():  # Ctrl-C/SIGTERM wait until the store call is done
                return fn(*args, **kwargs)
        except MlflowException as exc:
            if attempt == LOCK_RETRIES - 1 or not is_lock_error(exc):
                raise
            delay = min(2.0, 0.05 * 2**attempt) * (1 + random.random())
            log.info("tracking store busy; retrying in %.2f s", delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line over the same store the pipeline logs to."""
    uri = tracking_uri()
    cmd = ["mlflow", "ui", "--host", host, "--port", str(port), "--backend-store-uri", uri]
    if uri == default_tracking_uri():
        store = store_dir()
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        cmd += ["--default-artifact-root", (store / "artifacts").as_uri()]
    return cmd


# MLflow 3's UI opens an experiment in its GenAI view ("No data available") unless the experiment
# says it is classic model development or the URL asks for `workflowType=machine_learning`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
# The runs table's columns come from a view state the UI reads from an experiment tag
# `mlflow.sharedViewState.<key>` when the URL names the key (what its "Share" button writes).
VIEW_KEY = "imgclf-training"
VIEW_STATE_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# The values that decide a comparison: leak-free and all-test accuracy with their 95 % intervals,
# macro F1, the epochs trained, training time, and the recipe's main knobs. (The table's own
# Duration column shows each run's wall time too.)
VIEW_METRICS = (
    "test_leakfree_accuracy",
    "test_leakfree_accuracy_ci95_low",
    "test_leakfree_accuracy_ci95_high",
    "test_accuracy",
    "test_accuracy_ci95_low",
    "test_accuracy_ci95_high",
    "test_macro_f1",
    "epochs_run",
    "train_seconds",
)
VIEW_PARAMS = ("model.name", "optimizer.name", "train.epochs", "train.refit")


def training_view_state() -> dict[str, Any]:
    """The runs table the project opens on: newest first, the comparison values as columns."""
    columns = [f"metrics.`{m}`" for m in VIEW_METRICS] + [f"params.`{p}`" for p in VIEW_PARAMS]
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
        # Wide enough for the metric names (the default cuts them at about 16 characters).
        "columnWidths": {c: 7 * len(c.split("`")[1]) + 12 for c in columns},
        "runListHidden": False,
        "viewMaximized": False,
    }


def training_view(experiment_name: str) -> str | None:
    """Tag ``experiment_name`` for the training view; return its UI path, None if it is absent.

    The path (``#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=...``)
    goes after the server's address. The tags are rewritten each time, so the columns follow
    :data:`VIEW_METRICS` after an upgrade.
    """
    import json

    configure()
    client = MlflowClient()
    exp = retrying(client.get_experiment_by_name, experiment_name)
    if exp is None:
        return None
    state = json.dumps(training_view_state())
    tags = {EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT, VIEW_STATE_TAG: state}
    for key, value in tags.items():
        if exp.tags.get(key) != value:
            retrying(client.set_experiment_tag, exp.experiment_id, key, value)
    return (
        f"#/experiments/{exp.experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )
