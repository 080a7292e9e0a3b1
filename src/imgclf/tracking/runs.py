"""MLflow runs: the one way to open a run, and how runs end.

Every run the project creates goes through :func:`open_run`: the train stage's run (and its
resume), the reopen of that run by evaluate and export, ingest's run, a sweep's parent run and
its children (grid jobs, Optuna trials) and a lone ``imgclf-train`` job. Each run

- gets a distinct readable name (``train-<DVC experiment name or random suffix>``);
- carries its lineage and the host and pid of the process that holds it (re-tagged on a reopen);
- ends truthfully: FINISHED, FAILED on an exception, KILLED on Ctrl-C or SIGTERM (the CLI turns
  SIGTERM into :class:`KeyboardInterrupt`) or on an exception the caller names (a pruned trial).

A SIGKILLed process cannot end its run, so opening a run first marks this host's RUNNING runs of
the experiment whose process is gone KILLED (:func:`end_dead_runs`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import mlflow
from mlflow.entities import Run as MlflowRun
from mlflow.entities import RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from imgclf import interrupts
from imgclf.lineage import lineage_tags
from imgclf.tracking.store import configure, retrying, tracking_uri

log = logging.getLogger(__name__)

PID_TAG = "imgclf.pid"
HOST_TAG = "imgclf.host"
ENDED_BY_TAG = "imgclf.ended_by"
ORPHAN_TAG = "orphan_of"
PARENT_TAG = "mlflow.parentRunId"
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


@dataclass
class Run:
    """An open run. As a context manager it yields the run id and ends the run truthfully.

    A run opened with ``active=False`` (a sweep's parent, whose lifetime no block spans) can
    instead be ended by :meth:`end`, or by :func:`end_run_by_id` from whoever holds its id.
    """

    run_id: str
    name: str
    active: bool
    killed_on: tuple[type[BaseException], ...] = ()
    _ended: bool = field(default=False, repr=False)

    def __enter__(self) -> str:
        return self.run_id

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(exc)

    def end(self, exc: BaseException | None = None) -> None:
        """End the run with the status ``exc`` calls for (None: FINISHED); once only."""
        if self._ended:
            return
        self._ended = True
        status = _status_for(exc, self.killed_on)
        with interrupts.shielded():  # a SIGTERM now waits until the run is ended and popped
            # The status first, on its own: mlflow.end_run pops the fluent run before it writes,
            # so a retry of a failed end_run would find no run and leave this one RUNNING.
            end_run_by_id(self.run_id, status)
            active = mlflow.active_run()
            if self.active and active is not None and active.info.run_id == self.run_id:
                retrying(mlflow.end_run, status)


def _status_for(exc: BaseException | None, killed_on: tuple[type[BaseException], ...]) -> str:
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        status = RunStatus.FINISHED
    elif isinstance(exc, (KeyboardInterrupt, *killed_on)):
        status = RunStatus.KILLED  # stopped on purpose (Ctrl-C, SIGTERM, a pruned trial)
    else:
        status = RunStatus.FAILED
    return RunStatus.to_string(status)


def open_run(
    experiment_name: str,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    active: bool = True,
    killed_on: tuple[type[BaseException], ...] = (),
) -> Run:
    """Open a run of ``experiment_name``: a new one, or ``run_id`` again if the store has it.

    Use it as ``with open_run(...) as run_id:``; logging then goes to that run.

    Args:
        name: what the run is (``train``, ``trial-3-cnn``): a new run is named ``<name>-<DVC
            experiment name>``, else ``<name>-<random suffix>``. A reopened run keeps its name.
        tags: set on the run besides the lineage, host and pid tags.
        run_id: reopen this run (a resumed training, train's run for evaluate and export, a
            study's parent). If the store lost it (a wiped ``mlruns/``), a new run is opened,
            tagged ``orphan_of``.
        parent_run_id: open the run as a child of this one (a sweep's job or trial).
        active: make it MLflow's active run, which the logging functions write to. A sweep's
            parent is not: its jobs are active runs of their own, and several processes add
            trials to one study's parent.
        killed_on: exceptions that end the run KILLED rather than FAILED (``optuna.TrialPruned``).
    """
    exp_id = configure(experiment_name)
    assert exp_id is not None
    client = MlflowClient()
    if parent_run_id:
        # Before reaping: a parent another process left behind is alive again while we add to it.
        _hold(client, parent_run_id)
    end_dead_runs(exp_id, keep=run_id)
    old = find_run(client, run_id) if run_id else None
    extra = dict(tags or {})
    if old is not None:
        lineage = {k: v for k, v in lineage_tags().items() if k not in old.data.tags}
        _reopen(client, old, {**lineage, **extra, **_holder_tags()}, active)
        return Run(old.info.run_id, old.info.run_name, active, killed_on)
    if run_id:
        log.warning("MLflow run %s not found in %s; logging to a new run", run_id, tracking_uri())
        extra[ORPHAN_TAG] = run_id
    all_tags = {**_source_tags(), **lineage_tags(), **extra, **_holder_tags()}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run_name = _new_name(name)
    if active:
        new = retrying(mlflow.start_run, experiment_id=exp_id, run_name=run_name, tags=all_tags)
        new_id = new.info.run_id
    else:
        new_id = retrying(client.create_run, exp_id, run_name=run_name, tags=all_tags).info.run_id
    return Run(str(new_id), run_name, active, killed_on)


def _new_name(base: str) -> str:
    # From `secrets`, not `random`: keras.utils.set_random_seed seeds `random`, and MLflow's own
    # names drawn from it after the seed were the same for every run.
    return f"{base}-{os.environ.get('DVC_EXP_NAME') or secrets.token_hex(3)}"


def _holder_tags() -> dict[str, str]:
    """Who holds the run, so a later open can tell a live run from one whose process died."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _reopen(client: MlflowClient, old: MlflowRun, tags: dict[str, str], active: bool) -> None:
    if active:
        retrying(mlflow.start_run, run_id=old.info.run_id, tags=tags)
    else:
        _set_tags(client, old.info.run_id, tags)
    _revive(client, old)


def _hold(client: MlflowClient, run_id: str) -> None:
    """Tag ``run_id`` as held by this process, and make it RUNNING again if it was ended."""
    run = find_run(client, run_id)
    if run is None:
        return
    holder = _holder_tags()
    if any(run.data.tags.get(k) != v for k, v in holder.items()):
        _set_tags(client, run_id, holder)
    _revive(client, run)


def _revive(client: MlflowClient, run: MlflowRun) -> None:
    """Make ``run`` (as read before it was reopened) RUNNING; how it ended no longer applies."""
    if run.info.status != RUNNING:
        retrying(client.update_run, run.info.run_id, status=RUNNING)
    if ENDED_BY_TAG in run.data.tags:
        retrying(client.delete_tag, run.info.run_id, ENDED_BY_TAG)


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    retrying(client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def find_run(client: MlflowClient, run_id: str) -> MlflowRun | None:
    """The run, or None when the store does not have it; any other error is raised (a store
    that stayed locked is not a lost run: that would open an orphan in its place)."""
    try:
        return retrying(client.get_run, run_id)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def end_run_by_id(run_id: str, status: str = "FINISHED") -> None:
    """End a run by id (a sweep's parent, a dead trial's run) with ``status``."""
    retrying(MlflowClient().set_terminated, run_id, status=status)


def end_dead_runs(experiment_id: str, keep: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process no longer exists.

    Runs from other hosts (a shared tracking server) are left alone: their pids mean nothing
    here. ``keep`` is a run about to be reopened.

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def mark_killed(run_id: str, reason: str) -> None:
    """End a run that its own process can no longer end (SIGKILL, out-of-memory, power)."""
    client = MlflowClient()
    run = find_run(client, run_id)
    if run is None or run.info.status != RUNNING:
        return
    log.warning("MLflow run %s was left RUNNING (%s); marking it KILLED", run_id, reason)
    _set_tags(client, run_id, {ENDED_BY_TAG: reason})
    end_run_by_id(run_id, RunStatus.to_string(RunStatus.KILLED))


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
