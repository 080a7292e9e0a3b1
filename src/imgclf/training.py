"""The one training loop, used by the train stage and by every sweep job.

Early stopping, resume, per-epoch MLflow logging and Optuna pruning are callbacks on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgclf.config import Config

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
    arrays: dict[str, np.ndarray], n_classes: int, batch_size: int, seed: int
) -> tuple[Any, Any | None]:
    """tf.data pipelines over the in-memory tensors: shuffled train, ordered val, prefetched.

    The validation pipeline is None when the validation split is empty (a refit).
    """
    import tensorflow as tf

    def one_hot(y: np.ndarray) -> np.ndarray:
        return np.eye(n_classes, dtype=np.float32)[y]

    train = (
        tf.data.Dataset.from_tensor_slices((arrays["x_train"], one_hot(arrays["y_train"])))
        .shuffle(len(arrays["y_train"]), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    if len(arrays["y_val"]) == 0:
        return train, None
    val = (
        tf.data.Dataset.from_tensor_slices((arrays["x_val"], one_hot(arrays["y_val"])))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, val


def refit_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The train and validation splits as one training set (validation left empty)."""
    return {
        **arrays,
        "x_train": np.concatenate([arrays["x_train"], arrays["x_val"]]),
        "y_train": np.concatenate([arrays["y_train"], arrays["y_val"]]),
        "x_val": arrays["x_val"][:0],
        "y_val": arrays["y_val"][:0],
    }


def kept_metrics(history: dict[str, list[float]], epoch_index: int) -> dict[str, float]:
    """The kept epoch's validation accuracy and loss, or its training ones without validation.

    A refit has no validation split, so it reports ``train_accuracy``/``train_loss``: named
    apart so that a training fit is never read as a validation score.
    """
    if "val_loss" in history:
        return {k: history[k][epoch_index] for k in ("val_accuracy", "val_loss")}
    return {f"train_{k}": history[k][epoch_index] for k in ("accuracy", "loss")}


def best_epoch_index(history: dict[str, list[float]], monitor: str) -> int:
    """Index of the best epoch by ``monitor`` (lowest val_loss or highest val_accuracy)."""
    scores = np.array(history[monitor])
    return int(np.argmin(scores) if monitor == "val_loss" else np.argmax(scores))


def prepare(
    cfg: Config, arrays: dict[str, np.ndarray], n_classes: int
) -> tuple[Any, Any, Any | None]:
    """Set TensorFlow's threads, seed Keras, then build the pipelines and the compiled model.

    The one setup shared by :func:`fit` (sweeps) and :func:`run` (the stage): seeding first
    makes every call, every sweep trial included, start from the same random state. The
    threads take effect only before TensorFlow's first op in the process, so this comes first.

    Returns:
        The model, the training pipeline and the validation pipeline (None without validation).
    """
    import keras

    from imgclf.model import build_model, compile_model

    configure_tensorflow(cfg.train.threads)
    keras.utils.set_random_seed(cfg.train.seed)
    train_ds, val_ds = make_datasets(arrays, n_classes, cfg.train.batch_size, cfg.train.seed)
    input_shape = tuple(arrays["x_train"].shape[1:])
    model = build_model(cfg.model, input_shape, n_classes, augment=cfg.augment, seed=cfg.train.seed)
    steps_per_epoch = math.ceil(len(arrays["y_train"]) / cfg.train.batch_size)
    compile_model(model, cfg.optimizer, cfg.train, steps_per_epoch)
    return model, train_ds, val_ds


def fit(
    cfg: Config, arrays: dict[str, np.ndarray], n_classes: int, *, callbacks: Sequence[Any] = ()
) -> tuple[Any, dict[str, list[float]]]:
    """Build, compile and fit the model on the train split, validating every epoch on val.

    Used by the sweeps (:mod:`imgclf.sweep`), which inject their own ``callbacks`` (MLflow
    and Optuna pruning); the train stage's :func:`run` adds crash-safe resume on top of the
    same :func:`prepare`. Early stopping on ``train.monitor`` and NaN termination always apply.

    Returns:
        The fitted model (weights of the last epoch) and the per-epoch history.
    """
    import keras

    model, train_ds, val_ds = prepare(cfg, arrays, n_classes)
    stopping = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(monitor=cfg.train.monitor, patience=cfg.train.patience),
    ]
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.train.epochs,
        callbacks=[*stopping, *callbacks],
        verbose=2,
    )
    return model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}
