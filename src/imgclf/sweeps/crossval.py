"""A job scored by grouped k-fold cross-validation (``imgclf-train cv=grouped5``).

The job's run gets one child run per fold (``fold-<i>-of-<k>``, with that fold's epochs, its
held-out scores and training time; with ``cv.repeats`` one per fold and training seed,
``fold-<i>-of-<k>-seed-<s>``) and, when all folds are done, the summary of
:func:`imgclf.cv.summarize` (``cv_accuracy`` with ``_std`` and ``_ci95_low``/``_high``, the same
for macro F1 and each class's precision, recall and F1), the out-of-fold predictions
(``cv/predictions.csv``) and their confusion matrix. ``val_accuracy``, what sweeps optimise, is
``cv_accuracy``: the held-out folds are this job's validation.

Each fold trains in its own child process, as a lone job does (:mod:`.isolate`). In an Optuna
sweep the running mean of the folds' accuracy is reported after each fold, so a pruner can stop
a poor recipe after its first folds.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import cv, tracking
from imgclf.artifacts import CVOutputs, PreprocessOutputs, Rows
from imgclf.config import Config, ConfigError, flatten
from imgclf.sweeps.isolate import call_in_child
from imgclf.sweeps.job import CHILD_PRELOAD, JOB_SECTIONS, JobResult
from imgclf.sweeps.trial import TrialLink

log = logging.getLogger(__name__)

FOLD_TAG = "imgclf.fold"
SEED_TAG = "imgclf.seed"


@dataclass
class FoldResult:
    held: np.ndarray  # pool indices this fold held out
    proba: np.ndarray  # their predicted class probabilities
    train_seconds: float  # model build and training, in the fold's process: wall clock
    cpu_seconds: float  # the same span's CPU time (user + system, every thread)
    best_epoch: int
    epochs_run: int
    n_params: int
    fold: int  # which fold (0-based)
    seed: int  # its training seed: train.seed + the repeat


def check_pool(cfg: Config, *, sweeping: bool) -> None:
    """A sweep chooses among recipes, so it must never see the test set."""
    if sweeping and cfg.cv.folds and cfg.cv.pool != "train":
        raise ConfigError(
            f"cv.pool={cfg.cv.pool} pools Testing_Data into the folds: fine for measuring one "
            "recipe (make bench), never for choosing one; sweeps use cv.pool=train"
        )


def run_cv_job(
    cfg: Config,
    preprocess: Path,
    *,
    parent_run_id: str | None,
    run_name: str,
    tags: dict[str, str],
    link: TrialLink | None = None,
) -> JobResult:
    """Score ``cfg``'s recipe by ``cfg.cv.folds`` grouped folds; log the job and fold runs.

    Raises:
        NativeCrashError: a fold's training process died (that fold's run and the job's end
            FAILED).
        optuna.TrialPruned: the pruner stopped the trial after a fold (the job's run ends KILLED).
    """
    killed_on: tuple[type[BaseException], ...] = ()
    trial = None
    if link is not None:
        import optuna

        killed_on = (optuna.TrialPruned,)
    k, experiment = cfg.cv.folds, cfg.mlflow.experiment_name
    pool = cv.load_pool(
        preprocess, cfg.cv.pool, cfg.data.near_dup_distance, cfg.data.max_group_fraction
    )
    splits = cv.grouped_folds(pool.y, pool.groups, k, cfg.cv.seed)
    classes = PreprocessOutputs(preprocess).read_classes()
    seeds = f", {cfg.cv.repeats} training seeds" if cfg.cv.repeats > 1 else ""
    tags = {**tags, "imgclf.cv": f"{k} grouped folds over {cfg.cv.pool}{seeds}"}
    with tracking.open_run(
        experiment, run_name, parent_run_id=parent_run_id, tags=tags, killed_on=killed_on
    ) as run_id:
        tracking.log_params(flatten(cfg, (*JOB_SECTIONS, "cv")))
        if link is not None:
            link.set_user_attr("mlflow_run_id", run_id)
            trial = link.open() if link.pruner and link.objective else None
        folds: list[FoldResult] = []
        repeats = cfg.cv.repeats
        for step, (repeat, index) in enumerate(itertools.product(range(repeats), range(k))):
            seed = cfg.train.seed + repeat
            run_cfg = replace(cfg, train=replace(cfg.train, seed=seed))
            name = f"fold-{index + 1}-of-{k}" + (f"-seed-{seed}" if repeats > 1 else "")
            with tracking.open_run(
                experiment,
                name,
                parent_run_id=run_id,
                tags={FOLD_TAG: str(index + 1), SEED_TAG: str(seed), "stage": "cv-fold"},
                active=False,
            ) as fold_run:
                data = cv.fold_rows(
                    pool,
                    splits[index],
                    refit=cfg.train.refit,
                    val_fraction=cfg.data.val_fraction,
                    seed=cfg.data.split_seed,
                )
                folds.append(
                    call_in_child(
                        train_fold,
                        run_cfg,
                        data,
                        splits[index][1],
                        len(classes),
                        fold_run,
                        os.getpid(),
                        index,
                        preload=CHILD_PRELOAD,
                    )
                )
            done = folds[-1]  # a line per fold: a CV job can train for an hour
            log.info(
                "%s: %s (%d of %d): accuracy %.4f on %d held-out files, %.0f s training",
                run_name,
                name,
                step + 1,
                k * repeats,
                _accuracy(pool, done),
                len(done.held),
                done.train_seconds,
            )
            if trial is not None:
                _report(trial, folds, pool, step, k * repeats)
        result = _summarize(cfg, pool, classes, folds, run_id)
        if link is not None:
            tracking.set_tags({"optuna.state": "COMPLETE"})
    log.info(
        "%s: cv_accuracy %.4f (95 %% interval %.4f-%.4f) over %d grouped folds%s, %.0f s training",
        run_name,
        result.val_accuracy,
        result.extra["cv_accuracy_ci95_low"],
        result.extra["cv_accuracy_ci95_high"],
        k,
        seeds,
        result.extra["cv_train_seconds"],
    )
    return result


def _report(trial: Any, folds: list[FoldResult], pool: cv.Pool, step: int, total: int) -> None:
    """The running mean of the folds' accuracy, to the pruner; raise if it prunes."""
    import optuna

    running = float(np.mean([_accuracy(pool, f) for f in folds]))
    trial.report(running, step=step)
    if step + 1 < total and trial.should_prune():
        tracking.set_tags({"optuna.state": "PRUNED"})
        raise optuna.TrialPruned(f"pruned after fold {step + 1} of {total}")


def _accuracy(pool: cv.Pool, fold: FoldResult) -> float:
    return float((fold.proba.argmax(axis=1) == pool.y[fold.held]).mean())


def _summarize(
    cfg: Config, pool: cv.Pool, names: list[str], folds: list[FoldResult], run_id: str
) -> JobResult:
    """Log the folds' summary, predictions and confusion matrix to the job's run."""
    from imgclf import plots

    held = np.concatenate([f.held for f in folds])
    proba = np.concatenate([f.proba for f in folds])
    fold_of = np.concatenate([np.full(len(f.held), f.fold) for f in folds])
    seed_of = np.concatenate([np.full(len(f.held), f.seed) for f in folds])
    y_true, y_pred = pool.y[held], proba.argmax(axis=1)
    summary = cv.summarize(
        y_true, y_pred, fold_of, pool.groups[held], names, repeat_of=seed_of, seed=cfg.cv.seed
    )
    picked = np.clip(proba[np.arange(len(held)), y_true], 1e-7, 1.0)
    loss = float(-np.log(picked).mean())
    seconds = float(sum(f.train_seconds for f in folds))
    cpu_seconds = float(sum(f.cpu_seconds for f in folds))
    summary |= {
        "cv_loss": loss,
        "cv_train_seconds": round(seconds, 1),
        "cv_train_cpu_seconds": round(cpu_seconds, 1),
    }
    tracking.log_metrics(summary)
    with tempfile.TemporaryDirectory(prefix="imgclf-cv-") as tmp:
        out = CVOutputs(tmp)
        out.write_predictions(
            # p_<class>: the whole distribution, so runs' predictions can be averaged (an
            # ensemble scored on the same folds) or calibrated without retraining
            ("path", "actual", "predicted", "probability", "fold", "group", "seed")
            + tuple(f"p_{name}" for name in names),
            (
                (
                    pool.paths[row],
                    names[y_true[i]],
                    names[y_pred[i]],
                    f"{proba[i, y_pred[i]]:.4f}",
                    int(fold_of[i]) + 1,
                    int(pool.groups[row]),
                    int(seed_of[i]),
                    *(f"{p:.4f}" for p in proba[i]),
                )
                for i, row in enumerate(held)
            ),
        )
        cm = cv.confusion(y_true, y_pred, len(names))  # summed over the repeats
        k, repeats = int(summary["cv_folds"]), int(summary["cv_repeats"])
        title = f"{k}-fold grouped CV" + (f", {repeats} training seeds" if repeats > 1 else "")
        plots.confusion_matrix(cm, names, out.confusion_png, title)
        for path in (out.predictions, out.confusion_png):
            tracking.log_artifact(path, CVOutputs.STAGE)
    return JobResult(
        run_id=run_id,
        val_accuracy=summary["cv_accuracy"],
        val_loss=loss,
        best_epoch=round(float(np.mean([f.best_epoch for f in folds]))),
        epochs_run=round(float(np.mean([f.epochs_run for f in folds]))),
        n_params=folds[0].n_params,
        extra=summary,
    )


def train_fold(
    cfg: Config,
    data: dict[str, Rows],
    held: np.ndarray,
    n_classes: int,
    run_id: str,
    holder: int,
    fold: int = 0,
) -> FoldResult:
    """The fold's child process: train the recipe on ``data`` (:func:`imgclf.cv.fold_rows`: row
    indices, which pickle small and read the shards here), predict its held-out part (``test``:
    the pool's files ``held``)."""
    from imgclf.training import TrainingState, fit, prepare

    state = TrainingState()
    with tracking.open_run(cfg.mlflow.experiment_name, "fold", run_id=run_id):
        tracking.set_tags({tracking.PID_TAG: str(holder)})
        tracking.log_params(flatten(cfg, (*JOB_SECTIONS, "cv")))
        started, cpu_started = time.perf_counter(), time.process_time()
        model, train_ds, val_ds = prepare(cfg, data, n_classes)
        keeper = _best_weights(state)
        fit(model, train_ds, val_ds, cfg.train, state=state, callbacks=[keeper])
        if val_ds is not None and keeper.weights is not None:
            model.set_weights(keeper.weights)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        test = data["test"]
        batches = ((b,) for b in test.batches(cfg.evaluate.batch_size))
        proba = np.asarray(model.predict(batches, verbose=0))
        accuracy = float((proba.argmax(axis=1) == test.labels).mean())
        tracking.log_metrics(
            {
                "fold_accuracy": accuracy,
                "train_seconds": round(seconds, 1),
                "train_cpu_seconds": round(cpu_seconds, 1),
                "best_epoch": state.best_epoch,
                "epochs_run": state.epochs_done,
                "n_train": data["train"].n,
                "n_val": data["val"].n,
                "n_held_out": test.n,
            }
        )
    return FoldResult(
        held=held,
        proba=proba,
        train_seconds=seconds,
        cpu_seconds=cpu_seconds,
        best_epoch=state.best_epoch,
        epochs_run=state.epochs_done,
        n_params=int(model.count_params()),
        fold=fold,
        seed=cfg.train.seed,
    )


def _best_weights(state: Any) -> Any:
    """A callback holding the weights of the best epoch so far (early stopping keeps it)."""
    import keras

    class BestWeights(keras.callbacks.Callback):
        weights: list[Any] | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if state.improved:
                self.weights = self.model.get_weights()

    return BestWeights()
