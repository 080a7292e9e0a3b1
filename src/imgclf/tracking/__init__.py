"""Tracking: the only package that imports mlflow.

- :mod:`.store`: the store's URI, SQLite set-up for concurrent writers, the retry every store
  call goes through;
- :mod:`.runs`: :func:`open_run`, the one way to open a run (with lineage, host/pid tags and a
  readable name), and how runs end, also those whose process was killed;
- :mod:`.record`: logging params, metrics, tags and artifacts to runs, reading them back;
- :mod:`.registry`: the model registry (versions, aliases, tags, files).
"""

from imgclf.tracking.record import (
    child_runs,
    download_run_file,
    log_artifact,
    log_artifacts_to,
    log_metrics,
    log_params,
    log_text,
    log_to,
    logged_steps,
    run_params,
    run_status,
    set_run_tags,
    set_tags,
)
from imgclf.tracking.registry import (
    RegistryLookupError,
    VersionInfo,
    delete_version,
    download_version_files,
    download_version_folder,
    get_version,
    list_versions,
    log_model_with_files,
    open_registry,
    register_version,
    require_model,
    set_alias,
    set_version_tags,
)
from imgclf.tracking.runs import (
    ENDED_BY_TAG,
    HOST_TAG,
    ORPHAN_TAG,
    PARENT_TAG,
    PID_TAG,
    Run,
    end_dead_runs,
    end_run_by_id,
    mark_killed,
    open_run,
)
from imgclf.tracking.store import (
    DB_NAME,
    configure,
    default_tracking_uri,
    retrying,
    store_dir,
    tracking_uri,
    ui_command,
)

__all__ = [
    "DB_NAME",
    "ENDED_BY_TAG",
    "HOST_TAG",
    "ORPHAN_TAG",
    "PARENT_TAG",
    "PID_TAG",
    "RegistryLookupError",
    "Run",
    "VersionInfo",
    "child_runs",
    "configure",
    "default_tracking_uri",
    "delete_version",
    "download_run_file",
    "download_version_files",
    "download_version_folder",
    "end_dead_runs",
    "end_run_by_id",
    "get_version",
    "list_versions",
    "log_artifact",
    "log_artifacts_to",
    "log_metrics",
    "log_model_with_files",
    "log_params",
    "log_text",
    "log_to",
    "logged_steps",
    "mark_killed",
    "open_registry",
    "open_run",
    "register_version",
    "require_model",
    "retrying",
    "run_params",
    "run_status",
    "set_alias",
    "set_run_tags",
    "set_tags",
    "set_version_tags",
    "store_dir",
    "tracking_uri",
    "ui_command",
]
