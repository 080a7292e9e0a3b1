"""One sweep job: load the cached train/val tensors, train, score on validation, log one run.

The sweeper and the grid callback reach the in-process jobs through :data:`STATE` (the trial
to report to, the parent run).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf import tracking
from imgclf.config import Config, ConfigError, flatten
from imgclf.errors import MissingInputError
from imgclf.lineage import project_root

if TYPE_CHECKING:
    from imgclf.training import TrainingState

log = logging.getLogger(__name__)

ENV_CONF_DIR = "IMGCLF_CONF_DIR"
ENV_PREPROCESS_DIR = "IMGCLF_PREPROCESS_DIR"
JOB_SECTIONS = ("data", "model", "optimizer", "augment", "train")


@dataclass
class TrialLink:
    """What the Optuna sweeper hands to the job it launches."""

    trial: Any  # optuna.Trial
    objective: str
    study_name: str


@dataclass
class SweepState:
    """The channel between the sweeper / callback and the in-process jobs."""

    parent_run_id: str | None = None
    parent_owned: bool = False  # created lazily for a grid sweep: the callback ends it
    link: TrialLink | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary_printed: bool = False


STATE = SweepState()


@dataclass
class JobResult:
    run_id: str
    val_accuracy: float
    val_loss: float
    best_epoch: int
    epochs_run: int
    pruned: bool = False

    def metrics(self) -> dict[str, float]:
        """What a job returns to Hydra (and the Optuna sweeper reads its objective from)."""
        return {
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "best_epoch": float(self.best_epoch),
            "epochs_run": float(self.epochs_run),
        }


# --- data -------------------------------------------------------------------------------------

_ARRAYS: dict[tuple[str, float], tuple[dict[str, np.ndarray], list[str]]] = {}


def conf_dir() -> Path:
    """The Hydra config folder: ``$IMGCLF_CONF_DIR``, else ``<project root>/conf``."""
    env = os.environ.get(ENV_CONF_DIR)
    return Path(env).resolve() if env else project_root() / "conf"


def preprocess_dir() -> Path:
    """The preprocess stage's output: ``$IMGCLF_PREPROCESS_DIR``, else the project's."""
    env = os.environ.get(ENV_PREPROCESS_DIR)
    if env:
        return Path(env).resolve()
    from imgclf.artifacts import PreprocessOutputs

    return PreprocessOutputs.in_project(project_root()).root


def load_arrays(cfg: Config, folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The preprocess stage's cached train/val tensors, loaded once per process.

    The test split is dropped here, so no job can score on it by mistake.

    Raises:
        FileNotFoundError: the cache is missing (names the command that makes it).
        ConfigError: the cache holds another image size than this job asks for.
    """
    from imgclf.artifacts import PreprocessOutputs

    pre = PreprocessOutputs(folder)
    npz = pre.dataset
    if not npz.is_file():
        raise MissingInputError(
            f"{npz} not found: sweeps train on the preprocess stage's tensors; run "
            "`dvc pull data.dvc && dvc repro preprocess` first (or set IMGCLF_PREPROCESS_DIR)"
        )
    key = (str(npz), npz.stat().st_mtime)
    if key not in _ARRAYS:
        _ARRAYS.clear()
        arrays = pre.load_dataset()
        subset = {k: v for k, v in arrays.items() if not k.endswith("_test")}
        _ARRAYS[key] = (subset, pre.read_classes())
    arrays, classes = _ARRAYS[key]
    size = tuple(arrays["x_train"].shape[1:3])
    wanted = (cfg.data.image_height, cfg.data.image_width)
    if size != wanted:
        raise ConfigError(
            f"{npz} holds {size[0]}x{size[1]} images but this job asks for "
            f"data.image_height={wanted[0]} data.image_width={wanted[1]}: set those in conf/ "
            "and `dvc repro preprocess`, or do not sweep them"
        )
    fit = pre.read_fit()
    if fit != cfg.data.fit:
        raise ConfigError(
            f"{npz} holds images fitted with data.fit={fit} but this job asks for "
            f"data.fit={cfg.data.fit}: set it in conf/ and `dvc repro preprocess`, "
            "or do not sweep it"
        )
    if len(arrays["y_train"]) == 0 or len(arrays["y_val"]) == 0:
        raise ConfigError(f"{npz}: the train or validation split is empty")
    return arrays, classes


# --- one job ----------------------------------------------------------------------------------


def run_job(
    cfg: Config,
    arrays: dict[str, np.ndarray],
    classes: list[str],
    *,
    parent_run_id: str | None,
    run_name: str,
    tags: dict[str, str],
    link: TrialLink | None = None,
) -> JobResult:
    """Train on the train split, score on the validation split, log one (child) MLflow run.

    With ``link``, each epoch's ``link.objective`` is reported to the Optuna trial; a pruned
    trial stops, its run ends KILLED with the tag ``optuna.state=PRUNED``, and
    :class:`optuna.TrialPruned` is raised. The Keras session is cleared afterwards either way,
    so memory stays flat across the trials of one process.
    """
    import keras

    from imgclf.training import TrainingState, fit, kept_metrics, prepare

    killed_on: tuple[type[BaseException], ...] = ()
    pruner: Any = None
    if link is not None:
        import optuna

        from imgclf.sweeps.study import pruning_callback

        killed_on = (optuna.TrialPruned,)
        pruner = pruning_callback(link.trial, link.objective)
    # No checkpoint: a killed trial is retried whole. Early stopping, the kept epoch and the
    # per-epoch logging are the train stage's own (the loop's callbacks).
    state = TrainingState()
    with tracking.open_run(
        cfg.mlflow.experiment_name,
        run_name,
        parent_run_id=parent_run_id,
        tags=tags,
        killed_on=killed_on,
    ) as run_id:
        tracking.log_params(flatten(cfg, JOB_SECTIONS))
        if link is not None:
            link.trial.set_user_attr("mlflow_run_id", run_id)
        try:
            model, train_ds, val_ds = prepare(cfg, arrays, len(classes))
            extra = [pruner] if pruner is not None else []
            fit(model, train_ds, val_ds, cfg.train, state=state, callbacks=extra)
            del model, train_ds, val_ds
        finally:
            # Each trial builds a new graph; without this, TensorFlow keeps every old one.
            keras.backend.clear_session()
            gc.collect()
            _record_trial_resources(link, state)
        kept = kept_metrics(state.history, state.best_epoch - 1)
        result = JobResult(
            run_id=run_id,
            val_accuracy=kept["val_accuracy"],
            val_loss=kept["val_loss"],
            best_epoch=state.best_epoch,
            epochs_run=state.epochs_done,
            pruned=pruner is not None and pruner.pruned_at is not None,
        )
        tracking.log_metrics(
            {
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "best_val_accuracy": result.val_accuracy,
                "best_val_loss": result.val_loss,
            }
        )
        if link is not None:
            tracking.set_tags({"optuna.state": "PRUNED" if result.pruned else "COMPLETE"})
        if result.pruned:
            import optuna

            raise optuna.TrialPruned(
                f"pruned after epoch {result.epochs_run}: {link.objective if link else ''}"
            )
    log.info(
        "%s: val_accuracy %.4f, val_loss %.4f (best epoch %d of %d)",
        run_name,
        result.val_accuracy,
        result.val_loss,
        result.best_epoch,
        result.epochs_run,
    )
    return result


def _record_trial_resources(link: TrialLink | None, state: TrainingState) -> None:
    from imgclf.sweeps.study import rss_mb

    rss = rss_mb()
    log.info("memory after job: %.0f MiB resident", rss)
    if link is not None:
        link.trial.set_user_attr("epochs_run", state.epochs_done)
        link.trial.set_user_attr("rss_mb", round(rss, 1))
