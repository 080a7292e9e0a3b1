"""Resumable training: an atomic per-epoch checkpoint that survives SIGKILL.

Keras's ``BackupAndRestore`` restores weights, optimizer state and the epoch counter, but it
overwrites its files in place (a kill during the write leaves a torn file), and it does not carry
the other callbacks' state: early-stopping counters, the best-so-far weights, the history and the
MLflow run. So train puts :func:`checkpoint_callback` on the training loop
(:func:`imgclf.training.fit`) instead, which keeps all of it together:

``<out_dir>/.resume/epoch-NNNN/`` holds, for the last finished epoch ``NNNN``,
``latest.weights.h5`` (model *and* optimizer variables, so Adam's moments and
``optimizer.iterations`` — the step a learning-rate schedule reads — carry over),
``best.weights.h5`` (the best epoch so far) and ``state.json`` (history, early-stopping counters,
the MLflow run id and the key below). Each checkpoint is written into a temporary folder and
renamed into place, so a kill leaves either the previous checkpoint or the new one, never a mix.

The checkpoint is keyed to the training params, the dataset bytes and the network's structure
(:func:`model_signature`): a changed config, new data or model code that builds another network
starts afresh instead of resuming a different experiment. It lives inside train's output
folder but is not a DVC output, so ``dvc repro`` (which deletes declared outputs before running
the stage) keeps it; train deletes it once its outputs are written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imgclf import tracking
from imgclf.errors import ImgclfError
from imgclf.fileio import fsync, read_json, write_json
from imgclf.training import TrainingState

log = logging.getLogger(__name__)

RESUME_DIRNAME = ".resume"
STATE_NAME = "state.json"
LATEST_WEIGHTS = "latest.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
LOCK_NAME = "train.lock"
_EPOCH_PREFIX = "epoch-"


class TrainingBusyError(ImgclfError, RuntimeError):
    """Another process is training into the same output folder."""


@dataclass(kw_only=True)
class ResumeState(TrainingState):
    """The loop's state plus what ties a checkpoint to its experiment and its MLflow run."""

    key: str
    run_id: str | None = None


def dataset_md5(path: Path) -> str:
    """md5 of a file, read in chunks (the cached dataset can be large)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_signature(model: Any) -> list[Any]:
    """The network's structure without its names: each leaf layer's class and weight shapes.

    Two builds of the same code give the same signature (Keras numbers its generated names per
    process, so names are left out); code that builds another network gives another one, even
    where every weight shape stays the same.
    """

    def walk(layer: Any) -> list[Any]:
        children = getattr(layer, "layers", None)
        if children:
            return [type(layer).__name__, [walk(child) for child in children]]
        return [type(layer).__name__, [[list(w.shape), str(w.dtype)] for w in layer.weights]]

    return walk(model)


def resume_key(params: Mapping[str, Any], data_files: list[Path], model: Any) -> str:
    """A short hash of the training params, the input files' bytes and the network's structure."""
    blob = json.dumps(
        {
            "params": dict(params),
            "data": [dataset_md5(p) for p in data_files],
            "model": model_signature(model),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Checkpointer:
    """The resume folder of one output folder: restore, commit each epoch, discard."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.key = key
        self._current: Path | None = None

    def _checkpoints(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(
            p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(_EPOCH_PREFIX)
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder while training.

        A ``dvc repro`` killed with SIGKILL leaves its stage command running as an orphan; a
        second ``dvc repro`` would otherwise train into the same folder at the same time.
        The kernel drops the lock when its holder dies, so it is never stale.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_NAME).open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise TrainingBusyError(
                    f"another train (pid {holder}) is writing into {self.root.parent}: wait for "
                    f"it to finish, or stop it (kill {holder}) and run again; it will resume"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self) -> tuple[ResumeState | None, str | None]:
        """The latest complete checkpoint's state, if it belongs to this key.

        Returns:
            ``(state, None)`` to resume; ``(None, stale_run_id)`` when a checkpoint of another
            config or dataset was dropped (its run never finished), else ``(None, None)``.
        """
        for tmp in self.root.glob(f".{_EPOCH_PREFIX}*") if self.root.is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)  # a commit that a kill interrupted
        checkpoints = self._checkpoints()
        if not checkpoints:
            return None, None
        latest = checkpoints[-1]
        try:
            raw = read_json(latest / STATE_NAME)
            state = ResumeState(**raw)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("train: ignoring unreadable checkpoint %s (%s)", latest, exc)
            self.discard()
            return None, None
        if state.key != self.key:
            log.info(
                "train: params, data or network changed since interrupted run %s; starting afresh",
                state.run_id,
            )
            self.discard()
            return None, state.run_id
        self._current = latest
        return state, None

    def restore_weights(self, model: Any) -> None:
        """Load the current checkpoint's weights and optimizer variables into ``model``.

        All or nothing: Keras assigns layer by layer and raises at the first that does not fit,
        so on failure every variable is put back as it was (freshly initialised), and training
        that starts afresh does not start from half of the old checkpoint. A part of the file
        that Keras would skip with a warning is a failure too.
        """
        assert self._current is not None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so its variables can be loaded
        variables = [*model.weights, *(model.optimizer.variables if model.optimizer else [])]
        before = [v.numpy() for v in variables]
        try:
            with warnings.catch_warnings():
                # Keras only warns when it skips a part of the file it cannot match (those
                # layers or optimizer variables stay fresh): a resume that is not whole is none
                warnings.simplefilter("error", UserWarning)
                model.load_weights(self._current / LATEST_WEIGHTS)
        except BaseException:
            for variable, value in zip(variables, before, strict=True):
                variable.assign(value)
            raise

    def best_weights(self) -> Path | None:
        """The best-so-far weights of the current checkpoint (None before any epoch)."""
        if self._current is None:
            return None
        path = self._current / BEST_WEIGHTS
        return path if path.is_file() else None

    def commit(self, model: Any, state: ResumeState, *, improved: bool) -> None:
        """Write a new checkpoint for ``state.epochs_done`` and make it current, atomically."""
        name = f"{_EPOCH_PREFIX}{state.epochs_done:04d}"
        tmp = self.root / f".{name}.{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        model.save_weights(tmp / LATEST_WEIGHTS)
        previous_best = self.best_weights()
        if improved or previous_best is None:
            os.link(tmp / LATEST_WEIGHTS, tmp / BEST_WEIGHTS)
        else:
            shutil.copyfile(previous_best, tmp / BEST_WEIGHTS)
        write_json(tmp / STATE_NAME, asdict(state))
        fsync(tmp)
        final = self.root / name
        if final.exists():  # the same epoch again after a kill between rename and cleanup
            shutil.rmtree(final)
        os.rename(tmp, final)  # the commit point
        fsync(self.root)
        for old in self._checkpoints():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self._current = final

    def discard(self) -> None:
        """Delete every checkpoint (training finished, diverged, or was superseded)."""
        for p in self._checkpoints():
            shutil.rmtree(p, ignore_errors=True)
        self._current = None


def checkpoint_callback(checkpointer: Checkpointer, state: ResumeState) -> Any:
    """The training loop's checkpoint: the weights and ``state`` committed after each epoch.

    It replaces ``ModelCheckpoint``/``BackupAndRestore`` (see the module's docstring). In the
    loop it runs after early stopping has recorded the epoch into ``state`` and before the epoch
    is logged; epochs committed but not logged are logged on resume (:func:`log_missed_epochs`).
    """
    import keras

    class Checkpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
            if checkpointer.best_weights() is None:
                # Epoch 0: the run id is on disk before the first epoch, so a kill in epoch 1
                # resumes the same MLflow run rather than leaving a stray one.
                checkpointer.commit(self.model, state, improved=True)

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            if state.diverged:
                checkpointer.discard()  # resuming a diverged run would only diverge again
                return
            checkpointer.commit(self.model, state, improved=state.improved)

    return Checkpoint()


def restore(checkpointer: Checkpointer, model: Any, experiment: str) -> ResumeState:
    """The interrupted training to continue (weights loaded into ``model``), or a fresh state.

    A checkpoint of other params, data or model code is dropped, and its unfinished MLflow run
    is ended KILLED.
    """
    state, superseded_run = checkpointer.load()
    if state is not None:
        try:
            checkpointer.restore_weights(model)
        except (ValueError, OSError, UserWarning) as exc:  # a file this Keras cannot read whole
            log.warning(
                "train: cannot resume from %s (%s); starting afresh", checkpointer.root, exc
            )
            checkpointer.discard()
            superseded_run, state = state.run_id, None
    if superseded_run is not None:
        tracking.configure(experiment)
        tracking.mark_killed(superseded_run, "interrupted; its params, data or model changed")
    if state is None:
        return ResumeState(key=checkpointer.key)
    log.info("train: resuming after epoch %d (MLflow run %s)", state.epochs_done, state.run_id)
    return state


def log_missed_epochs(state: ResumeState, run_id: str) -> None:
    """Log the restored epochs that a kill between checkpoint and log kept from ``run_id``."""
    if not state.epochs_done:
        return
    logged = tracking.logged_steps(run_id, "loss")
    for epoch in range(state.epochs_done):
        if epoch not in logged:
            tracking.log_metrics(state.epoch_values(epoch), step=epoch)
