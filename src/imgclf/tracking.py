"""MLflow tracking and registry: the only module that imports mlflow.

The store defaults to the project's own ``mlruns/`` (SQLite database + artifact folder),
resolved to an absolute path so DVC's temporary experiment copies log to the same store;
``MLFLOW_TRACKING_URI`` overrides it.

Several processes may write to one SQLite store at once (parallel sweep jobs, a pipeline beside a
sweep). The store is switched to WAL (readers never block the writer), every connection waits
for locks instead of failing at once, schema creation is serialised by a file lock, and writes
that still meet "database is locked" are retried with backoff.

Runs end truthfully: FINISHED, FAILED on an exception, KILLED on Ctrl-C or SIGTERM (the CLI turns
SIGTERM into an exception). A SIGKILLed process cannot mark its run, so every run carries its
host and pid, and starting a run marks this host's RUNNING runs whose process is gone KILLED.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from imgclf import interrupts
from imgclf.lineage import project_root

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
SQLITE_BUSY_TIMEOUT_S = 60.0
LOCK_RETRIES = 8
PID_TAG = "imgclf.pid"
HOST_TAG = "imgclf.host"
ENDED_BY_TAG = "imgclf.ended_by"

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
    exp = _retrying(client.get_experiment_by_name, experiment_name)
    if exp is None:
        artifact_location = None
        if uri == default_tracking_uri():
            artifact_location = (store_dir() / "artifacts").as_uri()
        try:
            exp_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
        except MlflowException:  # created concurrently by another process
            exp = _retrying(client.get_experiment_by_name, experiment_name)
            assert exp is not None
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    _retrying(mlflow.set_experiment, experiment_id=exp_id)
    return exp_id


def _source_tags() -> dict[str, str]:
    """Replacements for MLflow's automatic ``mlflow.source.*`` tags.

    MLflow records the script's absolute path (a home folder, a user name) and the git remote
    URL, which may carry a token (``https://user:token@host/...``) or be a local path. Tags
    passed to ``start_run`` win over the automatic ones.
    """
    tags = {MLFLOW_SOURCE_NAME: Path(sys.argv[0]).name or "python"}
    remote = _git_remote_url()
    if remote is not None:
        tags[MLFLOW_GIT_REPO_URL] = remote
    return tags


def _git_remote_url() -> str | None:
    """The origin's URL without credentials; "" for a local path (which would leak a folder)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        url = subprocess.run(
            ["git", "remote", "get-url", "origin"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "ssh", "git") and parts.hostname:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if "://" not in url and ":" in url and not url.startswith(("/", ".", "~")):
        return url.split("@")[-1]  # scp-like git@host:org/repo.git: the user is no secret
    return ""


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
            _retrying(MlflowClient(uri).search_experiments, max_results=1)  # creates the tables
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


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retrying(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
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
            if attempt == LOCK_RETRIES - 1 or not _is_lock_error(exc):
                raise
            delay = min(2.0, 0.05 * 2**attempt) * (1 + random.random())
            log.info("tracking store busy; retrying in %.2f s", delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def start_run(
    experiment_name: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[str]:
    """Start a run and yield its id; the run ends FAILED on an exception, KILLED on Ctrl-C.

    With ``run_id`` of a run that still exists (an interrupted training being resumed), that
    run is reopened instead, so its per-epoch metrics continue without a gap.
    """
    exp_id = configure(experiment_name)
    assert exp_id is not None
    end_dead_runs(exp_id, keep=run_id)
    tags = {**_source_tags(), **(tags or {})}
    if run_id is not None and run_exists(run_id):
        active = _retrying(mlflow.start_run, run_id=run_id)
        _retrying(mlflow.set_tags, dict(tags or {}))
    else:
        active = _retrying(mlflow.start_run, run_name=run_name, tags=dict(tags or {}))
    with _ending_truthfully(active) as run:
        yield run.info.run_id


@contextlib.contextmanager
def resume_run(run_id: str, experiment_name: str) -> Iterator[str]:
    """Reopen the run that ``train`` created, so every stage reports to the same run."""
    configure(experiment_name)
    with _ending_truthfully(_retrying(mlflow.start_run, run_id=run_id)) as run:
        yield run.info.run_id


@contextlib.contextmanager
def _ending_truthfully(active: Any) -> Iterator[Any]:
    run = active.__enter__()
    try:
        # Who holds the run, so a later start can tell a live run from one whose process died.
        _retrying(mlflow.set_tags, {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
        yield run
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM (see cli)
        _end_active_run(RunStatus.KILLED)
        raise
    except BaseException:
        _end_active_run(RunStatus.FAILED)
        raise
    else:
        _end_active_run(RunStatus.FINISHED)


def _end_active_run(status: int) -> None:
    run = mlflow.active_run()
    try:
        mlflow.end_run(RunStatus.to_string(status))
    except MlflowException as exc:
        # end_run has already popped the run; set its status directly until the store answers.
        if run is None or not _is_lock_error(exc):
            raise
        _retrying(MlflowClient().set_terminated, run.info.run_id, RunStatus.to_string(status))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def end_dead_runs(experiment_id: str, keep: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process no longer exists.

    Runs from other hosts (a shared tracking server) are left alone: their pids mean nothing
    here. ``keep`` is a run about to be resumed.

    Returns:
        The ids of the runs marked.
    """
    client = MlflowClient()
    host = socket.gethostname()
    running = _retrying(
        client.search_runs,
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    ended = []
    for r in running:
        pid = r.data.tags.get(PID_TAG, "")
        if r.info.run_id == keep or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        mark_killed(r.info.run_id, reason=f"process {pid} on {host} died")
        ended.append(r.info.run_id)
    return ended


def mark_killed(run_id: str, reason: str) -> None:
    """End a run that its own process can no longer end (SIGKILL, out-of-memory, power)."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return
    if run.info.status != "RUNNING":
        return
    log.warning("MLflow run %s was left RUNNING (%s); marking it KILLED", run_id, reason)
    _retrying(client.set_tag, run_id, ENDED_BY_TAG, reason)
    _retrying(client.set_terminated, run_id, RunStatus.to_string(RunStatus.KILLED))


def run_status(run_id: str) -> str:
    """The status of a run (RUNNING, FINISHED, FAILED, KILLED)."""
    return str(_retrying(MlflowClient().get_run, run_id).info.status)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` has been logged in ``run_id``."""
    history = _retrying(MlflowClient().get_metric_history, run_id, key)
    return {int(m.step) for m in history}


@contextlib.contextmanager
def reopen_run(run_id: str, experiment_name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """Reopen train's run; if the store lost it (a wiped ``mlruns/``), use a new tagged run."""
    configure(experiment_name)
    if run_exists(run_id):
        with resume_run(run_id, experiment_name) as rid:
            yield rid
        return
    log.warning("MLflow run %s not found in %s; logging to a new run", run_id, tracking_uri())
    with start_run(experiment_name, tags={**tags, "orphan_of": run_id}) as rid:
        yield rid


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line over the same store the pipeline logs to."""
    uri = tracking_uri()
    cmd = ["mlflow", "ui", "--host", host, "--port", str(port), "--backend-store-uri", uri]
    if uri == default_tracking_uri():
        store = store_dir()
        (store / "artifacts").mkdir(parents=True, exist_ok=True)
        cmd += ["--default-artifact-root", (store / "artifacts").as_uri()]
    return cmd


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` exists in the configured store."""
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def log_params(params: Mapping[str, Any]) -> None:
    """Log params (values stringified by MLflow)."""
    _retrying(mlflow.log_params, dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics."""
    _retrying(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one file or folder to the active run."""
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run."""
    _retrying(mlflow.set_tags, dict(tags))


def log_text(text: str, artifact_file: str) -> None:
    """Write ``text`` as an artifact file of the active run."""
    mlflow.log_text(text, artifact_file)


def keras_callback() -> Any:
    """MLflow's Keras callback: per-epoch loss/accuracy/val_* metrics and the model summary."""
    from mlflow.keras import MlflowCallback

    return MlflowCallback(log_every_epoch=True)


@dataclass
class VersionInfo:
    """What imgclf reads of a registered model version."""

    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    run_id: str | None
    created_ms: int


def _version_info(mv: Any) -> VersionInfo:
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=sorted(mv.aliases or []),
        tags=dict(mv.tags or {}),
        run_id=mv.run_id,
        created_ms=int(mv.creation_timestamp or 0),
    )


def log_model_with_files(
    model: Any,
    *,
    input_example: Any,
    metadata: Mapping[str, Any],
    files_dir: Path,
    metrics: Mapping[str, float],
) -> str:
    """Log ``model`` (``.h5`` MLflow model) plus every file of ``files_dir`` under ``formats/``.

    Nothing is registered here: the caller creates the version only once all files are
    stored, so a version never exists without its files. ``metrics`` go to the active run and
    to the logged model (MLflow shows them on the model version).

    Returns:
        The logged model's URI (``models:/m-...``), the source of the version to create.
    """
    import keras
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, model.predict(input_example, verbose=0))
    info = mlflow.tensorflow.log_model(
        model,
        name="model",
        keras_model_kwargs={"save_format": "h5"},
        signature=signature,
        input_example=input_example,
        metadata=dict(metadata),
        # Stated, not inferred: MLflow's inference re-imports TensorFlow in a subprocess to
        # watch which modules load, ~20 s per export on this machine.
        pip_requirements=[
            f"tensorflow=={tf.__version__}",
            f"keras=={keras.__version__}",
            f"h5py=={_version('h5py')}",
        ],
    )
    MlflowClient().log_model_artifacts(info.model_id, str(files_dir), "formats")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
    return str(info.model_uri)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def register_version(name: str, source_uri: str, tags: Mapping[str, str]) -> str:
    """Create a version of ``name`` from ``source_uri`` with all its ``tags`` at once."""
    mv = mlflow.register_model(source_uri, name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def delete_version(name: str, version: str) -> None:
    """Delete a model version (used to undo a registration that could not complete)."""
    MlflowClient().delete_model_version(name, version)


def get_version(name: str, version: str | None = None, alias: str | None = None) -> VersionInfo:
    """One version, by number or by alias.

    Raises:
        LookupError: the model, version or alias does not exist.
    """
    client = MlflowClient()
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        what = f"@{alias}" if alias is not None else f"version {version}"
        raise LookupError(f"model '{name}' has no {what} in {tracking_uri()}") from exc
    return _version_info(mv)


def list_versions(name: str) -> list[VersionInfo]:
    """Every version of ``name``, oldest first (empty when the model does not exist)."""
    client = MlflowClient()
    versions = [_version_info(mv) for mv in client.search_model_versions(f"name = '{name}'")]
    if versions:
        # Search results leave aliases empty; the registered model knows them.
        aliases: dict[str, str] = dict(client.get_registered_model(name).aliases or {})
        for v in versions:
            v.aliases = sorted(a for a, ver in aliases.items() if str(ver) == v.version)
    return sorted(versions, key=lambda v: int(v.version))


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (aliases only: registry stages are deprecated)."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def set_version_tags(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Add or overwrite tags on a model version."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def download_version_files(name: str, version: str, rel: str, dst: Path) -> Path:
    """Download ``formats/<rel>`` (a file or a folder) of a version into ``dst``."""
    base = MlflowClient().get_model_version_download_uri(name, str(version)).rstrip("/")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{base}/formats/{rel}", dst_path=str(dst)
    )
    return Path(local)


# --- Sweeps: a parent run per sweep, one child run per job ------------------------------------
# The parent is handled through the client, never as the fluent "active" run, so the children
# can be active runs of their own and several processes can add children to the same parent.

PARENT_TAG = "mlflow.parentRunId"


@contextlib.contextmanager
def start_child_run(
    experiment_name: str,
    *,
    parent_run_id: str | None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
) -> Iterator[str]:
    """Start a run under ``parent_run_id`` (a plain run when None) and yield its id.

    It ends KILLED on Ctrl-C or on one of ``killed_on`` (a pruned trial: stopped on purpose,
    not broken), FAILED on any other exception, FINISHED otherwise.
    """
    configure(experiment_name)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = mlflow.start_run(run_name=run_name, tags=all_tags)
    try:
        yield run.info.run_id
    except BaseException as exc:
        stopped = isinstance(exc, (KeyboardInterrupt, *killed_on))
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if stopped else RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def open_parent_run(
    experiment_name: str,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Reopen ``run_id`` (status RUNNING again) if it exists in the store, else create a run.

    Returns:
        The parent run's id.
    """
    exp_id = configure(experiment_name)
    client = MlflowClient()
    if run_id and run_exists(run_id):
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id
    assert exp_id is not None
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    return str(run.info.run_id)


def end_run_by_id(run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run that is not the active one (a sweep's parent, an orphaned child)."""
    MlflowClient().set_terminated(run_id, status=status)


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Tag a run that is not the active one."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_metric_to(run_id: str, key: str, value: float, step: int | None = None) -> None:
    """Log one metric to a run that is not the active one."""
    MlflowClient().log_metric(run_id, key, float(value), step=step or 0)


def log_artifacts_to(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Log a folder's files to a run that is not the active one."""
    MlflowClient().log_artifacts(run_id, str(path), artifact_path)
