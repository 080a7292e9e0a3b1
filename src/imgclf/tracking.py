"""MLflow tracking and registry: the only module that imports mlflow.

The store defaults to the project's own ``mlruns/`` (SQLite database + artifact folder),
resolved to an absolute path so DVC's temporary experiment copies log to the same store;
``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.lineage import project_root

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"


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
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment_name is None:
        return None
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        artifact_location = None
        if uri == default_tracking_uri():
            artifact_location = (store_dir() / "artifacts").as_uri()
        try:
            exp_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(experiment_name)
            assert exp is not None
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def start_run(
    experiment_name: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Start a run and yield its id; the run ends FAILED on an exception, KILLED on Ctrl-C."""
    configure(experiment_name)
    with _ending_truthfully(mlflow.start_run(run_name=run_name, tags=dict(tags or {}))) as run:
        yield run.info.run_id


@contextlib.contextmanager
def resume_run(run_id: str, experiment_name: str) -> Iterator[str]:
    """Reopen the run that ``train`` created, so every stage reports to the same run."""
    configure(experiment_name)
    with _ending_truthfully(mlflow.start_run(run_id=run_id)) as run:
        yield run.info.run_id


@contextlib.contextmanager
def _ending_truthfully(active: Any) -> Iterator[Any]:
    try:
        yield active.__enter__()
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


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
    mlflow.log_params(dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one file or folder to the active run."""
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run."""
    mlflow.set_tags(dict(tags))


def keras_callback() -> Any:
    """MLflow's Keras callback: per-epoch loss/accuracy/val_* metrics and the model summary."""
    from mlflow.keras import MlflowCallback

    return MlflowCallback(log_every_epoch=True)


def log_and_register_keras_model(
    model: Any,
    *,
    registered_model_name: str,
    input_example: Any,
    metadata: Mapping[str, Any],
    version_tags: Mapping[str, str],
    extra_files: list[str] | None = None,
) -> str:
    """Log ``model`` as an ``.h5`` MLflow model on the active run and register a version.

    Returns:
        The new version number, as a string.
    """
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, model.predict(input_example, verbose=0))
    info = mlflow.tensorflow.log_model(
        model,
        name="model",
        keras_model_kwargs={"save_format": "h5"},
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_model_name,
        metadata=dict(metadata),
        extra_files=extra_files,
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in version_tags.items():
        client.set_model_version_tag(registered_model_name, version, key, str(value))
    return version


def set_aliases(name: str, version: str, *, challenger: str, champion: str) -> list[str]:
    """Point ``challenger`` at ``version``; also ``champion`` when the model has none yet."""
    client = MlflowClient()
    client.set_registered_model_alias(name, challenger, version)
    aliases = [challenger]
    try:
        client.get_model_version_by_alias(name, champion)
    except MlflowException:
        client.set_registered_model_alias(name, champion, version)
        aliases.append(champion)
    return aliases


def load_registered_keras_model(model_uri: str) -> tuple[Any, dict[str, Any]]:
    """Load a registered Keras model and the metadata logged with it (class names, size)."""
    from mlflow.models import get_model_info

    info = get_model_info(model_uri)
    model = mlflow.tensorflow.load_model(model_uri)
    return model, dict(info.metadata or {})


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
