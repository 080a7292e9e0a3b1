"""train: fit the CNN on the train split (streamed from the shards), early-stopping on validation;
keep the best epoch.

With ``train.refit: true`` it instead fits train + validation together for exactly
``train.epochs`` epochs and keeps the last one: the recipe, epoch count included, is chosen with
refit off, then the final model learns from every training image (600 instead of 480 here).
Sweeps never refit: they exist to score recipes on validation.

Outputs: :class:`imgclf.artifacts.TrainOutputs` (the kept epoch's model, the per-epoch history
with empty val cells for a refit, the kept epoch with its validation metrics or, for a refit, its
training metrics, and the MLflow run that evaluate and export report to).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import resume, tracking
from imgclf.artifacts import PreprocessOutputs, TrainOutputs
from imgclf.config import Config, flatten
from imgclf.training import fit, kept_metrics, prepare, refit_rows

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


def run(cfg: Config, *, in_dir: Path, out_dir: Path, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train on ``in_dir``'s shards and write the kept epoch's model into ``out_dir``.

    Args:
        callbacks: extra Keras callbacks on the training loop, after the built-in ones
            (:func:`imgclf.training.fit`); tests inject faults through it.
    """
    pre, out = PreprocessOutputs(in_dir), TrainOutputs(out_dir)
    reader = pre.reader()
    data = {s: reader.subset(s) for s in ("train", "val")}
    classes = pre.read_classes()
    if data["train"].n == 0 or data["val"].n == 0:
        raise ValueError(f"{in_dir}: the train or validation split is empty")
    if cfg.train.refit:
        data = refit_rows(data)
    model, train_ds, val_ds = prepare(cfg, data, len(classes))

    out_dir.mkdir(parents=True, exist_ok=True)
    params = flatten(cfg, TRAIN_SECTIONS)
    ckpt = resume.Checkpointer(
        out_dir / resume.RESUME_DIRNAME,
        resume.resume_key(params, [pre.manifest, pre.classes], model),
    )
    with ckpt.locked():
        state = resume.restore(ckpt, model, cfg.mlflow.experiment_name)
        with tracking.open_run(cfg.mlflow.experiment_name, "train", run_id=state.run_id) as run_id:
            if state.run_id is not None:
                tracking.set_tags({"resumed_after_epoch": str(state.epochs_done)})
            state.run_id = run_id  # committed with the first checkpoint, before epoch 1
            tracking.log_params(params)  # the same values again on a resume, which MLflow accepts
            tracking.set_tags({"classes": ",".join(classes), "stage": "train"})
            resume.log_missed_epochs(state, run_id)
            checkpoint = resume.checkpoint_callback(ckpt, state)
            started = time.perf_counter()  # this process's share: a resume adds its own
            fit(
                model,
                train_ds,
                val_ds,
                cfg.train,
                state=state,
                checkpoint=checkpoint,
                callbacks=callbacks,
            )
            best_weights = ckpt.best_weights()
            assert best_weights is not None  # committed with every epoch the loop recorded
            model.load_weights(best_weights)

            kept = kept_metrics(state.history, state.best_epoch - 1)
            summary: dict[str, Any] = {
                "refit": cfg.train.refit,
                "best_epoch": state.best_epoch,
                "epochs_run": state.epochs_done,
                "n_train": data["train"].n,
                "n_val": data["val"].n,
                **kept,
            }
            tracking.log_metrics(
                {
                    "best_epoch": state.best_epoch,
                    "epochs_run": state.epochs_done,
                    "train_seconds": round(time.perf_counter() - started, 1),
                    **{f"best_{k}": v for k, v in kept.items()},
                }
            )
            out.save_model(model)
            out.write_history(state.history)
            out.write_summary(summary)
            out.write_run(run_id, cfg.mlflow.experiment_name)
        # Only now, with every output written and the run FINISHED, is the checkpoint spent.
        ckpt.discard()
    log.info(
        "train: kept epoch %d of %d, trained on %d images; %s",
        state.best_epoch,
        state.epochs_done,
        summary["n_train"],
        ", ".join(f"{k} {v:.4f}" for k, v in kept.items()),
    )
    return TrainResult(
        run_id,
        state.best_epoch,
        state.epochs_done,
        kept.get("val_accuracy"),
        kept.get("val_loss"),
        out.model,
    )
