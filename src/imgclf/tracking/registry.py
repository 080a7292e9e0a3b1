"""The MLflow model registry: logging a model with its files, versions, aliases and tags."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf.errors import ImgclfError
from imgclf.tracking.store import configure, retrying, tracking_uri


class RegistryLookupError(ImgclfError, LookupError):
    """No such store, model, version or alias; the message names what exists instead."""


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
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, model.predict(input_example, verbose=0))
    # MLflow picks the .h5 file name from save_format and passes the kwarg on to Keras 3's
    # model.save, which infers the format from the name and logs that the kwarg is deprecated
    # (and that .h5 is legacy: the format users asked for). Our call, so not the user's noise.
    absl = logging.getLogger("absl")
    absl.addFilter(_drop_h5_notes)
    try:
        info = _log_keras_model(model, signature, input_example, metadata)
    finally:
        absl.removeFilter(_drop_h5_notes)
    retrying(MlflowClient().log_model_artifacts, info.model_id, str(files_dir), "formats")
    retrying(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
    return str(info.model_uri)


def _drop_h5_notes(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return "`save_format` argument is deprecated" not in text and "as an HDF5 file" not in text


def _log_keras_model(
    model: Any, signature: Any, input_example: Any, metadata: Mapping[str, Any]
) -> Any:
    import keras
    import tensorflow as tf

    return retrying(
        mlflow.tensorflow.log_model,
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


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def register_version(name: str, source_uri: str, tags: Mapping[str, str]) -> str:
    """Create a version of ``name`` from ``source_uri`` with all its ``tags`` at once."""
    with contextlib.redirect_stderr(io.StringIO()):  # its "Created version" prints; export logs
        mv = retrying(
            mlflow.register_model, source_uri, name, tags={k: str(v) for k, v in tags.items()}
        )
    return str(mv.version)


def delete_version(name: str, version: str) -> None:
    """Delete a model version (used to undo a registration that could not complete)."""
    retrying(MlflowClient().delete_model_version, name, version)


def open_registry() -> None:
    """Point MLflow at the store for reading, without creating one where there is none.

    A read (``imgclf predict``, ``registry``, ``promote``) in a folder with no store would
    otherwise leave an empty ``mlruns/mlflow.db`` behind.

    Raises:
        RegistryLookupError: the SQLite store does not exist.
    """
    uri = tracking_uri()
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        raise RegistryLookupError(
            f"no MLflow store at {db}: nothing is registered here; run `make repro` in the "
            "project (or set MLFLOW_TRACKING_URI to the store that holds the model)"
        )
    configure()


def get_version(name: str, version: str | None = None, alias: str | None = None) -> VersionInfo:
    """One version, by number or by alias.

    Raises:
        RegistryLookupError: the model, version or alias does not exist; the message lists the
            models, versions or aliases that do.
    """
    client = MlflowClient()
    try:
        if alias is not None:
            mv = retrying(client.get_model_version_by_alias, name, alias)
        else:
            mv = retrying(client.get_model_version, name, str(version))
    except MlflowException as exc:
        raise RegistryLookupError(_missing(client, name, version, alias)) from exc
    return _version_info(mv)


def require_model(name: str) -> None:
    """Raise :class:`RegistryLookupError` (naming the models that exist) unless ``name`` is
    registered."""
    client = MlflowClient()
    try:
        retrying(client.get_registered_model, name)
    except MlflowException as exc:
        raise RegistryLookupError(_missing(client, name, None, None)) from exc


def _missing(client: MlflowClient, name: str, version: str | None, alias: str | None) -> str:
    """What is missing, and what exists instead, in one line."""
    try:
        model = retrying(client.get_registered_model, name)
    except MlflowException:
        names = sorted(m.name for m in retrying(client.search_registered_models))
        exist = f"models: {', '.join(names)}" if names else "none is registered yet (`make repro`)"
        return f"no registered model '{name}' in {tracking_uri()}; {exist}"
    if alias is not None:
        aliases = sorted((model.aliases or {}).keys())
        return f"model '{name}' has no alias '{alias}'; aliases: {', '.join(aliases) or 'none'}"
    versions = sorted(
        (str(v.version) for v in retrying(client.search_model_versions, f"name = '{name}'")),
        key=int,
    )
    return f"model '{name}' has no version {version}; versions: {', '.join(versions) or 'none'}"


def list_versions(name: str) -> list[VersionInfo]:
    """Every version of ``name``, oldest first (empty when the model does not exist)."""
    client = MlflowClient()
    found = retrying(client.search_model_versions, f"name = '{name}'")
    versions = [_version_info(mv) for mv in found]
    if versions:
        # Search results leave aliases empty; the registered model knows them.
        aliases: dict[str, str] = dict(retrying(client.get_registered_model, name).aliases or {})
        for v in versions:
            v.aliases = sorted(a for a, ver in aliases.items() if str(ver) == v.version)
    return sorted(versions, key=lambda v: int(v.version))


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (aliases only: registry stages are deprecated)."""
    retrying(MlflowClient().set_registered_model_alias, name, alias, str(version))


def set_version_tags(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Add or overwrite tags on a model version."""
    client = MlflowClient()
    for key, value in tags.items():
        retrying(client.set_model_version_tag, name, str(version), key, str(value))


def download_version_folder(name: str, version: str, dst: Path) -> Path:
    """Download the whole ``formats/`` folder of a version into ``dst``; return its path."""
    return download_version_files(name, version, "", dst)


def download_version_files(name: str, version: str, rel: str, dst: Path) -> Path:
    """Download ``formats/<rel>`` (a file or a folder; "" for all) of a version into ``dst``."""
    base = retrying(MlflowClient().get_model_version_download_uri, name, str(version))
    local = retrying(
        mlflow.artifacts.download_artifacts,
        artifact_uri="/".join(p for p in (base.rstrip("/"), "formats", rel) if p),
        dst_path=str(dst),
    )
    return Path(local)


def set_version_description(name: str, version: str, text: str) -> None:
    """Set a version's description (MLflow renders it as markdown: the model card)."""
    retrying(MlflowClient().update_model_version, name, str(version), description=text)


def version_description(name: str, version: str) -> str:
    """A version's description ('' when it has none)."""
    mv = retrying(MlflowClient().get_model_version, name, str(version))
    return str(mv.description or "")
