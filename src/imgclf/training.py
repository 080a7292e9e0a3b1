"""The one training loop, used by the train stage and by every sweep job.

:func:`fit` runs Keras's ``model.fit`` under one fixed stack of callbacks, in this order:

1. ``TerminateOnNaN``: stops at the first NaN batch instead of finishing a lost epoch;
2. early stopping: records each epoch into a :class:`TrainingState` (history, best epoch,
   patience counter; ``diverged`` on a NaN or infinite value) and stops after ``train.patience``
   epochs without improvement on ``train.monitor``. Without validation (a refit) every epoch runs
   and the last one is kept. The counters live in the state, not in the callback, so the train
   stage can checkpoint them and a resumed fit carries on where the killed one stopped;
3. the caller's ``checkpoint`` (the train stage's :func:`imgclf.resume.checkpoint_callback`;
   sweep jobs have none: a killed trial is retried whole);
4. per-epoch MLflow logging through :func:`imgclf.tracking.log_metrics` (Keras's own metric
   names, ``optimizer_iterations`` and ``learning_rate``) into the active run, after the
   checkpoint so that a kill never logs an epoch twice; the model summary once, at the start;
5. the caller's ``callbacks``: Optuna pruning for a trial, or a fault a test injects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf import console, tracking
from imgclf.artifacts import Rows, concat
from imgclf.config import Config, TrainConfig

log = logging.getLogger(__name__)


def configure_tensorflow(threads: int) -> None:
    """Thread pools: ``threads`` > 0 pins both, 0 lets TensorFlow use every core."""
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
        except RuntimeError:  # already initialised in this process (tests, sweeps)
            log.debug("TensorFlow thread pools already set; keeping them")


def make_datasets(
    data: Mapping[str, Rows], n_classes: int, batch_size: int, seed: int
) -> tuple[Any, Any | None]:
    """tf.data pipelines streaming ``data``'s rows: shuffled train, ordered val, prefetched.

    The training pipeline shuffles row *indices* (8 bytes an image), batches them and reads
    each batch's images through the reader. ``shuffle`` draws its permutation from the seed
    and the buffer size alone, so these are the very batches, in the same order, that
    ``from_tensor_slices((x, y)).shuffle(n, seed)`` gave over in-memory tensors
    (tests/unit/test_shards.py). The validation pipeline is None when the validation
    split is empty (a refit).
    """
    import tensorflow as tf

    train, val = data["train"], data["val"]
    order = tf.data.Dataset.range(train.n).shuffle(
        train.n, seed=seed, reshuffle_each_iteration=True
    )
    train_ds = _read_batches(order.batch(batch_size), train, n_classes)
    if val.n == 0:
        return train_ds, None
    return train_ds, _read_batches(tf.data.Dataset.range(val.n).batch(batch_size), val, n_classes)


def _read_batches(indices: Any, rows: Rows, n_classes: int) -> Any:
    """Map each batch of row indices to (uint8 images, one-hot float32 labels), prefetched."""
    import tensorflow as tf

    eye = np.eye(n_classes, dtype=np.float32)

    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows.rows(idx), eye[rows.labels[idx]]

    def mapped(idx: Any) -> tuple[Any, Any]:
        # Stateless: the same indices always give the same rows, so a parallel map whose
        # output order is kept (deterministic=True) gives exactly the sequential batches.
        x, y = tf.numpy_function(read, [idx], (tf.uint8, tf.float32), stateful=False)
        x.set_shape((None, *rows.image_shape))
        y.set_shape((None, n_classes))
        return x, y

    return indices.map(mapped, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def refit_rows(data: Mapping[str, Rows]) -> dict[str, Rows]:
    """The train and validation splits as one training set, train rows then validation rows
    (validation left empty)."""
    train, val = data["train"], data["val"]
    return {**data, "train": concat([train, val]), "val": val.take([])}


def kept_metrics(history: dict[str, list[float]], epoch_index: int) -> dict[str, float]:
    """The kept epoch's validation accuracy and loss, or its training ones without validation.

    A refit has no validation split, so it reports ``train_accuracy``/``train_loss``: named
    apart so that a training fit is never read as a validation score.
    """
    if "val_loss" in history:
        return {k: history[k][epoch_index] for k in ("val_accuracy", "val_loss")}
    return {f"train_{k}": history[k][epoch_index] for k in ("accuracy", "loss")}


def prepare(cfg: Config, data: Mapping[str, Rows], n_classes: int) -> tuple[Any, Any, Any | None]:
    """Set TensorFlow's threads, seed Keras, then build the pipelines and the compiled model.

    The one setup before :func:`fit`, shared by the train stage and the sweep jobs: seeding
    first makes every call, every sweep trial included, start from the same random state. The
    threads take effect only before TensorFlow's first op in the process, so this comes first.

    Returns:
        The model, the training pipeline and the validation pipeline (None without validation).
    """
    import keras

    from imgclf.model import build_model, compile_model

    configure_tensorflow(cfg.train.threads)
    if cfg.train.deterministic:  # raises on ops that have no deterministic kernel
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.train.seed)
    train_ds, val_ds = make_datasets(data, n_classes, cfg.train.batch_size, cfg.train.seed)
    height, width, channels = data["train"].image_shape
    input_shape = (height, width, channels)
    model = build_model(cfg.model, input_shape, n_classes, augment=cfg.augment, seed=cfg.train.seed)
    steps_per_epoch = math.ceil(data["train"].n / cfg.train.batch_size)
    compile_model(model, cfg.optimizer, cfg.train, steps_per_epoch)
    return model, train_ds, val_ds


def is_better(monitor: str, current: float, best: float | None) -> bool:
    """Keras EarlyStopping's rule: losses improve downwards, the rest upwards, strictly."""
    if best is None:
        return True
    return current < best if "loss" in monitor else current > best


@dataclass
class TrainingState:
    """Where a fit stands after each epoch: what early stopping and a resume both need."""

    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_value: float | None = None
    best_epoch: int = 0  # 1-based; 0 while no epoch has finished
    wait: int = 0  # epochs since the best one, as Keras's EarlyStopping counts them
    stopped_early: bool = False
    diverged: bool = False

    def finished(self, epochs: int) -> bool:
        """Whether training already ran to its end (all epochs, or early stopping)."""
        return self.stopped_early or self.epochs_done >= epochs

    def record(
        self, epoch: int, values: Mapping[str, float], *, monitor: str | None, patience: int
    ) -> None:
        """Add epoch ``epoch``'s (0-based) values; update the best epoch and the patience.

        With ``monitor=None`` (no validation data) every epoch is the kept one. A NaN or
        infinite value, or none at all, marks the fit ``diverged`` and records nothing.
        """
        if not values or not all(math.isfinite(v) for v in values.values()):
            self.diverged = True
            return
        for k, v in values.items():
            self.history.setdefault(k, []).append(v)
        self.epochs_done = epoch + 1
        if monitor is None:
            self.best_epoch = epoch + 1
        elif is_better(monitor, values[monitor], self.best_value):
            self.best_value, self.best_epoch, self.wait = values[monitor], epoch + 1, 0
        else:
            self.wait += 1
            if self.wait >= patience and epoch > 0:
                self.stopped_early = True

    @property
    def improved(self) -> bool:
        """Whether the last recorded epoch is the best so far (the one to keep)."""
        return self.epochs_done > 0 and self.best_epoch == self.epochs_done

    def epoch_values(self, epoch: int) -> dict[str, float]:
        """Every recorded value of epoch ``epoch`` (0-based)."""
        return {k: v[epoch] for k, v in self.history.items()}


def _early_stopping(state: TrainingState, monitor: str | None, patience: int) -> Any:
    import keras

    class EarlyStopping(keras.callbacks.Callback):
        """Records each epoch into ``state`` and stops on patience or divergence.

        Keras's own EarlyStopping would reset its counters on a resumed ``fit``; these live in
        ``state``, which the train stage checkpoints with the weights.
        """

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items()}
            if values:
                optimizer = self.model.optimizer
                values["optimizer_iterations"] = float(
                    keras.ops.convert_to_numpy(optimizer.iterations)
                )
                values["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            state.record(epoch, values, monitor=monitor, patience=patience)
            if state.diverged or state.stopped_early:
                self.model.stop_training = True

    return EarlyStopping()


def _epoch_logger(state: TrainingState) -> Any:
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """The model summary, then each recorded epoch, to the active MLflow run."""

        def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            tracking.log_text("\n".join(lines), "model_summary.txt")

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            if not state.diverged:  # a diverged epoch is never recorded, so never logged
                tracking.log_metrics(state.epoch_values(epoch), step=epoch)

    return EpochLogger()


def _progress(state: TrainingState, epochs: int) -> Any:
    import time

    import keras

    class Progress(keras.callbacks.Callback):
        """One log line per recorded epoch (Keras's own lines only with IMGCLF_VERBOSE=1)."""

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            if state.diverged:
                return
            values = state.epoch_values(epoch)
            shown = ", ".join(
                f"{k} {values[k]:.4f}"
                for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                if k in values
            )
            best = " (best)" if state.best_epoch == epoch + 1 else ""
            took = time.perf_counter() - self.started
            log.info("epoch %d/%d: %s, %.1f s%s", epoch + 1, epochs, shown, took, best)

    return Progress()


def fit(
    model: Any,
    train_ds: Any,
    val_ds: Any | None,
    cfg: TrainConfig,
    *,
    state: TrainingState | None = None,
    checkpoint: Any | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainingState:
    """The training loop: fit ``model`` (from :func:`prepare`) under the callbacks above.

    Runs inside an active MLflow run, which receives each epoch's metrics.

    Args:
        val_ds: the validation pipeline; None (a refit) runs every epoch and keeps the last.
        state: where to continue from (a resumed fit); a fresh state when None. It is updated
            in place after each epoch and returned.
        checkpoint: a Keras callback that persists ``state`` and the weights after each epoch,
            before the epoch is logged (see :mod:`imgclf.resume`).
        callbacks: more Keras callbacks, run after the epoch is recorded and logged: Optuna
            pruning, or a test's injected fault. One that sets ``model.stop_training`` ends the
            fit after that epoch.

    Returns:
        The state: history, ``best_epoch`` (1-based; load the checkpoint's best weights to keep
        it, the model holds the last epoch's), ``epochs_done``, ``stopped_early``.

    Raises:
        FloatingPointError: the loss or a metric became NaN or infinite (nothing recorded for
            that epoch; a checkpoint callback has dropped its checkpoints).
    """
    import keras

    state = TrainingState() if state is None else state
    if state.finished(cfg.epochs):
        return state
    monitor = None if val_ds is None else cfg.monitor
    stack = [
        keras.callbacks.TerminateOnNaN(),
        _early_stopping(state, monitor, cfg.patience),
        *([checkpoint] if checkpoint is not None else []),
        _epoch_logger(state),
        _progress(state, cfg.epochs),
        *callbacks,
    ]
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        shuffle=False,  # make_datasets shuffles; on tf.data Keras ignores the flag, and warns
        initial_epoch=state.epochs_done,
        callbacks=stack,
        verbose=2 if console.verbose() else 0,
    )
    if state.diverged:
        raise FloatingPointError(
            f"training diverged (NaN loss) in epoch {state.epochs_done + 1}; nothing was saved"
        )
    return state
