"""MLflow runs: opening them, ending them truthfully, and logging to them.

Runs end truthfully: FINISHED, FAILED on an exception, KILLED on Ctrl-C or SIGTERM (the CLI turns
SIGTERM into an exception). A SIGKILLed process cannot mark its run, so every run carries its
host and pid, and starting a run marks this host's RUNNING runs whose process is gone KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from imgclf.tracking.store import configure, is_lock_error, retrying, tracking_uri

log = logging.getLogger(__name__)

PID_TAG = "imgclf.pid"
HOST_TAG = "imgclf.host"
ENDED_BY_TAG = "imgclf.ended_by"


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
        active = retrying(mlflow.start_run, run_id=run_id)
        retrying(mlflow.set_tags, dict(tags or {}))
    else:
        active = retrying(mlflow.start_run, run_name=run_name, tags=dict(tags or {}))
    with _ending_truthfully(active) as run:
        yield run.info.run_id


@contextlib.contextmanager
def resume_run(run_id: str, experiment_name: str) -> Iterator[str]:
    """Reopen the run that ``train`` created, so every stage reports to the same run."""
    configure(experiment_name)
    with _ending_truthfully(retrying(mlflow.start_run, run_id=run_id)) as run:
        yield run.info.run_id


@contextlib.contextmanager
def _ending_truthfully(active: Any) -> Iterator[Any]:
    run = active.__enter__()
    try:
        # Who holds the run, so a later start can tell a live run from one whose process died.
        retrying(mlflow.set_tags, {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
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
        if run is None or not is_lock_error(exc):
            raise
        retrying(MlflowClient().set_terminated, run.info.run_id, RunStatus.to_string(status))


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
    running = retrying(
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
    retrying(client.set_tag, run_id, ENDED_BY_TAG, reason)
    retrying(client.set_terminated, run_id, RunStatus.to_string(RunStatus.KILLED))


def run_status(run_id: str) -> str:
    """The status of a run (RUNNING, FINISHED, FAILED, KILLED)."""
    return str(retrying(MlflowClient().get_run, run_id).info.status)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` has been logged in ``run_id``."""
    history = retrying(MlflowClient().get_metric_history, run_id, key)
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


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` exists in the configured store."""
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def log_params(params: Mapping[str, Any]) -> None:
    """Log params (values stringified by MLflow)."""
    retrying(mlflow.log_params, dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics."""
    retrying(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one file or folder to the active run."""
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run."""
    retrying(mlflow.set_tags, dict(tags))


def log_text(text: str, artifact_file: str) -> None:
    """Write ``text`` as an artifact file of the active run."""
    mlflow.log_text(text, artifact_file)


def keras_callback() -> Any:
    """MLflow's Keras callback: per-epoch loss/accuracy/val_* metrics and the model summary."""
    from mlflow.keras import MlflowCallback

    return MlflowCallback(log_every_epoch=True)


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
