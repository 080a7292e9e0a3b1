"""Logging to runs and reading them back: params, metrics, tags, artifacts.

The plain functions write to MLflow's active run (the one :func:`imgclf.tracking.open_run`
opened); the ``*_to`` / ``*_by_id`` ones to a run given by id (a sweep's parent). Every store
call goes through :func:`imgclf.tracking.store.retrying`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.tracking.runs import find_run
from imgclf.tracking.store import is_lock_error, retrying


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run (values stringified by MLflow)."""
    retrying(mlflow.log_params, dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run, at ``step`` (an epoch) if given."""
    retrying(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run."""
    retrying(mlflow.set_tags, dict(tags))


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one file or folder to the active run."""
    if path.is_dir():
        retrying(mlflow.log_artifacts, str(path), artifact_path)
    else:
        retrying(mlflow.log_artifact, str(path), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    """Write ``text`` as an artifact file of the active run."""
    retrying(mlflow.log_text, text, artifact_file)


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Tag a run that is not the active one."""
    tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
    retrying(MlflowClient().log_batch, run_id, tags=tag_list)


def log_artifacts_to(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Log a folder's files to a run that is not the active one."""
    retrying(MlflowClient().log_artifacts, run_id, str(path), artifact_path)


def log_to(
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Log params and metrics to a run that is not the active one (a sweep's parent)."""
    import time

    now = int(time.time() * 1000)
    retrying(
        MlflowClient().log_batch,
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )


def child_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """The runs whose parent is ``parent_run_id``: id, status, params, metrics and tags each."""
    client = MlflowClient()
    parent = retrying(client.get_run, parent_run_id)
    runs = retrying(
        client.search_runs,
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10000,
    )
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
        }
        for r in runs
    ]


def run_params(run_id: str) -> dict[str, str] | None:
    """The params of a run; None when the store has no such run."""
    run = find_run(MlflowClient(), run_id)
    return None if run is None else dict(run.data.params)


def run_status(run_id: str) -> str:
    """The status of a run (RUNNING, FINISHED, FAILED, KILLED)."""
    return str(retrying(MlflowClient().get_run, run_id).info.status)


def download_run_file(run_id: str, rel: str, dst: Path) -> Path:
    """Download the artifact ``rel`` of run ``run_id`` into ``dst``. A run without that file
    (or a store without that run: look it up first, :func:`run_params`) raises
    :class:`FileNotFoundError` naming both."""
    client = MlflowClient()
    try:
        return Path(retrying(client.download_artifacts, run_id, rel, str(dst)))
    except (OSError, MlflowException) as exc:
        if isinstance(exc, MlflowException) and is_lock_error(exc):
            raise
        raise FileNotFoundError(f"run {run_id} has no artifact {rel}") from exc


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` has been logged in ``run_id``."""
    history = retrying(MlflowClient().get_metric_history, run_id, key)
    return {int(m.step) for m in history}
