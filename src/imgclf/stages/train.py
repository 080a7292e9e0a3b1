"""train: fit the CNN on the cached train split, early-stopping on validation; keep the best epoch.

Outputs (``out_dir``): ``model.keras`` (weights of the best epoch), ``history.csv`` (per-epoch
loss/accuracy/val_loss/val_accuracy, also a ``dvc plots`` source), ``train.json`` (best epoch and
its validation metrics) and ``run.json`` (the MLflow run that evaluate and export report to).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import tracking
from imgclf.config import Config, flatten
from imgclf.fileio import atomic_path, read_json, write_json, write_text
from imgclf.lineage import lineage_tags
from imgclf.stages.preprocess import load_dataset

log = logging.getLogger(__name__)

TRAIN_SECTIONS = ("data", "model", "optimizer", "augment", "train")


@dataclass
class TrainResult:
    run_id: str
    best_epoch: int
    epochs_run: int
    val_accuracy: float
    val_loss: float
    model_path: Path


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
) -> tuple[Any, Any]:
    """tf.data pipelines over the in-memory tensors: shuffled train, ordered val, prefetched."""
    import tensorflow as tf

    def one_hot(y: np.ndarray) -> np.ndarray:
        return np.eye(n_classes, dtype=np.float32)[y]

    train = (
        tf.data.Dataset.from_tensor_slices((arrays["x_train"], one_hot(arrays["y_train"])))
        .shuffle(len(arrays["y_train"]), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = (
        tf.data.Dataset.from_tensor_slices((arrays["x_val"], one_hot(arrays["y_val"])))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, val


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Per-epoch metrics as CSV (epoch numbers from 1)."""
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in history]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for i in range(len(history["loss"])):
        writer.writerow([i + 1, *(f"{history[k][i]:.6f}" for k in keys)])
    write_text(path, buf.getvalue())


def read_history(path: Path) -> dict[str, list[float]]:
    """Read :func:`write_history`'s CSV back into lists per metric."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in rows] for k in keys}


def best_epoch_index(history: dict[str, list[float]], monitor: str) -> int:
    """Index of the best epoch by ``monitor`` (lowest val_loss or highest val_accuracy)."""
    scores = np.array(history[monitor])
    return int(np.argmin(scores) if monitor == "val_loss" else np.argmax(scores))


def fit(
    cfg: Config, arrays: dict[str, np.ndarray], n_classes: int, *, callbacks: Sequence[Any] = ()
) -> tuple[Any, dict[str, list[float]]]:
    """Build, compile and fit the model on the train split, validating every epoch on val.

    Shared by :func:`run` and the sweeps (:mod:`imgclf.sweep`), which inject their own
    ``callbacks`` (checkpoint and MLflow here; Optuna pruning there). Early stopping on
    ``train.monitor`` and NaN termination always apply. Seeds Keras first, so every call
    (every sweep trial) starts from the same random state.

    Returns:
        The fitted model (weights of the last epoch) and the per-epoch history.
    """
    import keras

    from imgclf.model import build_model, compile_model

    keras.utils.set_random_seed(cfg.train.seed)
    train_ds, val_ds = make_datasets(arrays, n_classes, cfg.train.batch_size, cfg.train.seed)
    input_shape = tuple(arrays["x_train"].shape[1:])
    model = build_model(cfg.model, input_shape, n_classes, augment=cfg.augment, seed=cfg.train.seed)
    compile_model(model, cfg.optimizer, cfg.train)
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


def run(cfg: Config, *, in_dir: Path, out_dir: Path) -> TrainResult:
    """Train on ``in_dir``'s cached tensors and write the best model into ``out_dir``."""
    import keras

    configure_tensorflow(cfg.train.threads)
    arrays = load_dataset(in_dir / "dataset.npz")
    classes: list[str] = read_json(in_dir / "classes.json")
    if len(arrays["y_train"]) == 0 or len(arrays["y_val"]) == 0:
        raise ValueError(f"{in_dir}: the train or validation split is empty")

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ckpt-") as ckpt_dir:
        best_path = Path(ckpt_dir) / "best.weights.h5"
        callbacks = [
            keras.callbacks.ModelCheckpoint(
                best_path, monitor=cfg.train.monitor, save_best_only=True, save_weights_only=True
            ),
            tracking.keras_callback(),
        ]
        with tracking.start_run(cfg.mlflow.experiment_name, tags=lineage_tags()) as run_id:
            tracking.log_params(flatten(cfg, TRAIN_SECTIONS))
            tracking.set_tags({"classes": ",".join(classes), "stage": "train"})
            model, history = fit(cfg, arrays, len(classes), callbacks=callbacks)
            if any(math.isnan(v) for v in history.get("loss", [])) or not best_path.exists():
                raise FloatingPointError("training diverged (NaN loss); nothing was saved")
            model.load_weights(best_path)

            best = best_epoch_index(history, cfg.train.monitor)
            summary = {
                "best_epoch": best + 1,
                "epochs_run": len(history["loss"]),
                "val_accuracy": history["val_accuracy"][best],
                "val_loss": history["val_loss"][best],
                "n_train": int(len(arrays["y_train"])),
                "n_val": int(len(arrays["y_val"])),
            }
            tracking.log_metrics(
                {"best_epoch": summary["best_epoch"], "best_val_accuracy": summary["val_accuracy"],
                 "best_val_loss": summary["val_loss"]}
            )
            model_path = out_dir / "model.keras"
            with atomic_path(model_path) as tmp:
                model.save(tmp)
            write_history(out_dir / "history.csv", history)
            write_json(out_dir / "train.json", summary)
            write_json(out_dir / "run.json",
                       {"run_id": run_id, "experiment": cfg.mlflow.experiment_name})
    log.info("train: best epoch %d of %d, val_accuracy %.4f", summary["best_epoch"],
             summary["epochs_run"], summary["val_accuracy"])
    return TrainResult(run_id, int(summary["best_epoch"]), int(summary["epochs_run"]),
                       float(summary["val_accuracy"]), float(summary["val_loss"]), model_path)
