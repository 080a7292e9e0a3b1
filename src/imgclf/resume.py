"""Resumable training: an atomic per-epoch checkpoint that survives SIGKILL.

Keras's ``BackupAndRestore`` restores weights, optimizer state and the epoch counter, but it
overwrites its files in place (a kill during the write leaves a torn file), and it does not carry
the other callbacks' state: early-stopping counters, the best-so-far weights, the history and the
MLflow run. So train uses this module instead, which keeps all of it together:

``<out_dir>/.resume/epoch-NNNN/`` holds, for the last finished epoch ``NNNN``,
``latest.weights.h5`` (model *and* optimizer variables, so Adam's moments and
``optimizer.iterations`` — the step a learning-rate schedule reads — carry over),
``best.weights.h5`` (the best epoch so far) and ``state.json`` (history, early-stopping counters,
the MLflow run id and the key below). Each checkpoint is written into a temporary folder and
renamed into place, so a kill leaves either the previous checkpoint or the new one, never a mix.

The checkpoint is keyed to the training params and the dataset bytes: a changed config or new
data starts afresh instead of resuming a different experiment. It lives inside train's output
folder but is not a DVC output, so ``dvc repro`` (which deletes declared outputs before running
the stage) keeps it; train deletes it once its outputs are written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import ImgclfError
from imgclf.fileio import fsync, read_json, write_json

log = logging.getLogger(__name__)

RESUME_DIRNAME = ".resume"
STATE_NAME = "state.json"
LATEST_WEIGHTS = "latest.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
LOCK_NAME = "train.lock"
_EPOCH_PREFIX = "epoch-"


class TrainingBusyError(ImgclfError, RuntimeError):
    """Another process is training into the same output folder."""


@dataclass
class ResumeState:
    """Everything besides the weights that a resumed fit needs to continue seamlessly."""

    key: str
    run_id: str | None = None
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_value: float | None = None
    best_epoch: int = 0  # 1-based; 0 while no epoch has finished
    wait: int = 0  # epochs since the best one, as EarlyStopping counts them
    stopped_early: bool = False
    diverged: bool = False

    def finished(self, epochs: int) -> bool:
        """Whether training already ran to its end (all epochs, or early stopping)."""
        return self.stopped_early or self.epochs_done >= epochs


def dataset_md5(path: Path) -> str:
    """md5 of a file, read in chunks (the cached dataset can be large)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resume_key(params: Mapping[str, Any], data_files: list[Path]) -> str:
    """A short hash of the training params and the input files' bytes."""
    blob = json.dumps(
        {"params": dict(params), "data": [dataset_md5(p) for p in data_files]},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_better(monitor: str, current: float, best: float | None) -> bool:
    if best is None:
        return True
    # EarlyStopping's rule: losses improve downwards, everything else upwards, strictly.
    return current < best if "loss" in monitor else current > best


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
                "train: params or data changed since the interrupted run %s; starting afresh",
                state.run_id,
            )
            self.discard()
            return None, state.run_id
        self._current = latest
        return state, None

    def restore_weights(self, model: Any) -> None:
        """Load the current checkpoint's weights and optimizer variables into ``model``."""
        assert self._current is not None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so its variables can be loaded
        model.load_weights(self._current / LATEST_WEIGHTS)

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


def make_callback(
    checkpointer: Checkpointer,
    state: ResumeState,
    *,
    monitor: str | None,
    patience: int,
    on_epoch: Callable[[int, dict[str, float]], None],
) -> Any:
    """A Keras callback: early stopping, best-weights tracking and a checkpoint per epoch.

    It replaces ``EarlyStopping`` + ``ModelCheckpoint`` because their counters would reset on a
    resumed ``fit``; here they live in ``state`` and are committed with the weights. With
    ``monitor=None`` (a refit, which has no validation data) every epoch runs and the last one
    is kept. ``on_epoch``
    (the MLflow logger) runs only after the commit, so a kill never logs an epoch twice; epochs
    committed but not logged are logged on resume (see train).
    """
    import keras

    class ResumableTraining(keras.callbacks.Callback):
        def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
            if checkpointer.best_weights() is None:
                # Epoch 0: the run id is on disk before the first epoch, so a kill in epoch 1
                # resumes the same MLflow run rather than leaving a stray one.
                checkpointer.commit(self.model, state, improved=True)

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items()}
            if not values or any(math.isnan(v) or math.isinf(v) for v in values.values()):
                state.diverged = True  # TerminateOnNaN stops the fit; never checkpoint it
                self.model.stop_training = True
                return
            for k, v in values.items():
                state.history.setdefault(k, []).append(v)
            state.epochs_done = epoch + 1
            if monitor is None:
                improved = True
                state.best_epoch = epoch + 1
            elif improved := _is_better(monitor, values[monitor], state.best_value):
                state.best_value, state.best_epoch, state.wait = values[monitor], epoch + 1, 0
            else:
                state.wait += 1
                if state.wait >= patience and epoch > 0:
                    state.stopped_early = True
                    self.model.stop_training = True
            values["optimizer_iterations"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            )
            values["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
            state.history.setdefault("optimizer_iterations", []).append(
                values["optimizer_iterations"]
            )
            state.history.setdefault("learning_rate", []).append(values["learning_rate"])
            checkpointer.commit(self.model, state, improved=improved)
            on_epoch(epoch, values)

    return ResumableTraining()
