"""train: fit the CNN on the cached train split, early-stopping on validation; keep the best epoch.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import resume, tracking
from imgclf.artifacts import PreprocessOutputs, TrainOutputs
from imgclf.config import Config, flatten
from imgclf.lineage import lineage_tags
from imgclf.training import kept_metrics, prepare, refit_arrays

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


def run(cfg: Config, *, in_dir: Path, out_dir: Path) -> TrainResult:
    """Train on ``in_dir``'s cached tensors and write the best model into ``out_dir``."""
    import keras

    pre, out = PreprocessOutputs(in_dir), TrainOutputs(out_dir)
    arrays = pre.load_dataset()
    classes = pre.read_classes()
    if len(arrays["y_train"]) == 0 or len(arrays["y_val"]) == 0:
        raise ValueError(f"{in_dir}: the train or validation split is empty")
    if cfg.train.refit:
        arrays = refit_arrays(arrays)
    model, train_ds, val_ds = prepare(cfg, arrays, len(classes))

    out_dir.mkdir(parents=True, exist_ok=True)
    params = flatten(cfg, TRAIN_SECTIONS)
    ckpt = resume.Checkpointer(
        out_dir / resume.RESUME_DIRNAME,
        resume.resume_key(params, [pre.dataset, pre.classes]),
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
            out.save_model(model)
            out.write_history(history)
            out.write_summary(summary)
            out.write_run(run_id, cfg.mlflow.experiment_name)
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
        out.model,
    )
