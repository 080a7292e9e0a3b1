"""train: fit the CNN on the cached train split, early-stopping on validation; keep the best epoch.

With ``train.refit: true`` it instead fits train + validation together for exactly
``train.epochs`` epochs and keeps the last one: the recipe, epoch count included, is chosen with
refit off, then the final model learns from every training image (600 instead of 480 here).
Sweeps never refit: they exist to score recipes on validation.

Outputs (``out_dir``): ``model.keras`` (weights of the kept epoch), ``history.csv`` (per-epoch
loss/accuracy/val_loss/val_accuracy, the val cells empty for a refit; a ``dvc plots`` source),
``train.json`` (kept epoch, its validation metrics or, for a refit, its training metrics) and
``run.json`` (the MLflow run that evaluate and export report to).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import resume, tracking
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
    val_accuracy: float | None  # None for a refit: validation was trained on
    val_loss: float | None
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


HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Per-epoch metrics as CSV (epoch numbers from 1).

    The columns are always the same four, so ``dvc plots`` and ``dvc exp show`` compare a refit
    (no validation: its val cells are empty) with a validated run.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *HISTORY_KEYS])
    for i in range(len(history["loss"])):
        cells = (f"{history[k][i]:.6f}" if k in history else "" for k in HISTORY_KEYS)
        writer.writerow([i + 1, *cells])
    write_text(path, buf.getvalue())


def read_history(path: Path) -> dict[str, list[float]]:
    """Read :func:`write_history`'s CSV back into lists per metric (empty columns dropped)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in rows] for k in keys if all(r[k] for r in rows)}


def _restore(ckpt: resume.Checkpointer, model: Any, experiment: str) -> resume.ResumeState:
    """The interrupted training to continue (weights loaded into ``model``), or a fresh state."""
    state, superseded_run = ckpt.load()
    if state is not None:
        try:
            ckpt.restore_weights(model)
        except (ValueError, OSError) as exc:  # the model code changed shape since the kill
            log.warning("train: cannot resume from %s (%s); starting afresh", ckpt.root, exc)
            ckpt.discard()
            superseded_run, state = state.run_id, None
    if superseded_run is not None:
        tracking.configure(experiment)
        tracking.mark_killed(superseded_run, "interrupted; its params, data or model changed")
    if state is None:
        return resume.ResumeState(key=ckpt.key)
    log.info("train: resuming after epoch %d (MLflow run %s)", state.epochs_done, state.run_id)
    return state


def _start_logging(
    state: resume.ResumeState,
    run_id: str,
    params: dict[str, Any],
    classes: list[str],
    model: Any,
) -> None:
    """Params, tags and model summary; on a resume, also the epochs the kill kept from MLflow."""
    if state.run_id is not None:
        tracking.set_tags({"resumed_after_epoch": str(state.epochs_done)})
    state.run_id = run_id
    tracking.log_params(params)  # the same values again on a resume, which MLflow accepts
    tracking.set_tags({"classes": ",".join(classes), "stage": "train"})
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    tracking.log_text("\n".join(lines), "model_summary.txt")
    # Epochs are logged right after their checkpoint; a kill in between loses only the log.
    logged = tracking.logged_steps(run_id, "loss") if state.epochs_done else set()
    for epoch in range(state.epochs_done):
        if epoch not in logged:
            tracking.log_metrics({k: v[epoch] for k, v in state.history.items()}, step=epoch)


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


def run(cfg: Config, *, in_dir: Path, out_dir: Path) -> TrainResult:
    """Train on ``in_dir``'s cached tensors and write the best model into ``out_dir``."""
    import keras

    arrays = load_dataset(in_dir / "dataset.npz")
    classes: list[str] = read_json(in_dir / "classes.json")
    if len(arrays["y_train"]) == 0 or len(arrays["y_val"]) == 0:
        raise ValueError(f"{in_dir}: the train or validation split is empty")
    if cfg.train.refit:
        arrays = refit_arrays(arrays)
    model, train_ds, val_ds = prepare(cfg, arrays, len(classes))

    out_dir.mkdir(parents=True, exist_ok=True)
    params = flatten(cfg, TRAIN_SECTIONS)
    ckpt = resume.Checkpointer(
        out_dir / resume.RESUME_DIRNAME,
        resume.resume_key(params, [in_dir / "dataset.npz", in_dir / "classes.json"]),
    )
    with ckpt.locked():
        state = _restore(ckpt, model, cfg.mlflow.experiment_name)
        with tracking.start_run(
            cfg.mlflow.experiment_name, tags=lineage_tags(), run_id=state.run_id
        ) as run_id:
            _start_logging(state, run_id, params, classes, model)
            callbacks = [
                keras.callbacks.TerminateOnNaN(),
                resume.make_callback(
                    ckpt,
                    state,
                    monitor=None if val_ds is None else cfg.train.monitor,
                    patience=cfg.train.patience,
                    on_epoch=lambda epoch, logs: tracking.log_metrics(logs, step=epoch),
                ),
            ]
            if not state.finished(cfg.train.epochs):
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=cfg.train.epochs,
                    initial_epoch=state.epochs_done,
                    callbacks=callbacks,
                    verbose=2,
                )
            best_path = ckpt.best_weights()
            if state.diverged or state.epochs_done == 0 or best_path is None:
                ckpt.discard()  # resuming a diverged run would only diverge again
                raise FloatingPointError("training diverged (NaN loss); nothing was saved")
            model.load_weights(best_path)

            history = state.history
            kept = kept_metrics(history, state.best_epoch - 1)
            summary: dict[str, Any] = {
                "refit": cfg.train.refit,
                "best_epoch": state.best_epoch,
                "epochs_run": state.epochs_done,
                "n_train": int(len(arrays["y_train"])),
                "n_val": int(len(arrays["y_val"])),
                **kept,
            }
            tracking.log_metrics(
                {"best_epoch": state.best_epoch, **{f"best_{k}": v for k, v in kept.items()}}
            )
            model_path = out_dir / "model.keras"
            with atomic_path(model_path) as tmp:
                model.save(tmp)
            write_history(out_dir / "history.csv", history)
            write_json(out_dir / "train.json", summary)
            write_json(
                out_dir / "run.json", {"run_id": run_id, "experiment": cfg.mlflow.experiment_name}
            )
        # Only now, with every output written and the run FINISHED, is the checkpoint spent.
        ckpt.discard()
    log.info(
        "train: kept epoch %d of %d, trained on %d images; %s",
        summary["best_epoch"],
        summary["epochs_run"],
        summary["n_train"],
        ", ".join(f"{k} {v:.4f}" for k, v in kept.items()),
    )
    return TrainResult(
        run_id,
        int(summary["best_epoch"]),
        int(summary["epochs_run"]),
        summary.get("val_accuracy"),
        summary.get("val_loss"),
        model_path,
    )
