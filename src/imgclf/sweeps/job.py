"""One job: train on the train split in a child process, score on validation, log one run.

The job's process (Hydra's, in whatever launcher) opens the MLflow run and never imports
TensorFlow; the training happens in a child (:mod:`.isolate`), which reopens the run to log each
epoch and, in an Optuna sweep, reports to the trial through the study's storage
(:mod:`.trial`). A native crash in the child fails this job only.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf import tracking
from imgclf.config import Config, ConfigError, flatten
from imgclf.errors import MissingInputError
from imgclf.lineage import project_root
from imgclf.sweeps.isolate import NativeCrashError, call_in_child
from imgclf.sweeps.trial import TrialLink

if TYPE_CHECKING:
    from imgclf.artifacts import Rows

log = logging.getLogger(__name__)

ENV_PREPROCESS_DIR = "IMGCLF_PREPROCESS_DIR"
# Test-only fault: trial numbers (comma-separated) or "all" jobs whose child kills itself with
# SIGSEGV before training, as a native crash would.
ENV_TEST_SEGFAULT = "IMGCLF_TEST_SEGFAULT"
JOB_SECTIONS = ("data", "model", "optimizer", "augment", "train")
# Imported once by the fork server, so each job's child starts with TensorFlow loaded.
CHILD_PRELOAD = (
    "imgclf.sweeps.preload",
    "tensorflow",
    "keras",
    "imgclf.training",
    "imgclf.sweeps.job",
)


@dataclass
class JobResult:
    run_id: str
    val_accuracy: float
    val_loss: float
    best_epoch: int
    epochs_run: int
    n_params: int = 0
    pruned: bool = False
    peak_rss_mb: float = 0.0  # the training child's peak resident memory
    extra: dict[str, float] = field(default_factory=dict)  # a cross-validated job's cv_* summary

    def metrics(self) -> dict[str, float]:
        """What a job returns to Hydra (and the Optuna sweeper reads its objective from)."""
        return {
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "best_epoch": float(self.best_epoch),
            "epochs_run": float(self.epochs_run),
            "n_params": float(self.n_params),
            **self.extra,
        }


# --- data -------------------------------------------------------------------------------------


def preprocess_dir() -> Path:
    """The preprocess stage's output: ``$IMGCLF_PREPROCESS_DIR``, else the project's."""
    env = os.environ.get(ENV_PREPROCESS_DIR)
    if env:
        return Path(env).resolve()
    from imgclf.artifacts import PreprocessOutputs

    return PreprocessOutputs.in_project(project_root()).root


def load_rows(cfg: Config, folder: Path) -> tuple[dict[str, Rows], list[str]]:
    """The preprocess stage's train and validation rows (in the job's child process).

    The test split is left out here, so no job can score on it by mistake.

    Raises:
        MissingInputError: the shards are missing (names the command that makes them).
        ConfigError: the shards hold another image size or fit than this job asks for.
    """
    from imgclf.artifacts import PreprocessOutputs

    pre = PreprocessOutputs(folder)
    shards = pre.shards
    if not pre.manifest.is_file():
        raise MissingInputError(
            f"{pre.manifest} not found: sweeps train on the preprocess stage's shards; run "
            "`dvc pull data.dvc && dvc repro preprocess` first (or set IMGCLF_PREPROCESS_DIR)"
        )
    reader = pre.reader()
    data = {s: reader.subset(s) for s in ("train", "val")}
    classes = pre.read_classes()
    size = tuple(reader.image_shape[:2])
    wanted = (cfg.data.image_height, cfg.data.image_width)
    if size != wanted:
        raise ConfigError(
            f"{shards} holds {size[0]}x{size[1]} images but this job asks for "
            f"data.image_height={wanted[0]} data.image_width={wanted[1]}: set those in conf/ "
            "and `dvc repro preprocess`, or do not sweep them"
        )
    fit = pre.read_fit()
    if fit != cfg.data.fit:
        raise ConfigError(
            f"{shards} holds images fitted with data.fit={fit} but this job asks for "
            f"data.fit={cfg.data.fit}: set it in conf/ and `dvc repro preprocess`, "
            "or do not sweep it"
        )
    if data["train"].n == 0 or data["val"].n == 0:
        raise ConfigError(f"{shards}: the train or validation split is empty")
    return data, classes


# --- one job ----------------------------------------------------------------------------------


def run_job(
    cfg: Config,
    preprocess: Path,
    *,
    parent_run_id: str | None,
    run_name: str,
    tags: dict[str, str],
    link: TrialLink | None = None,
) -> JobResult:
    """Train on the train split, score on the validation split, log one (child) MLflow run.

    With ``link``, each epoch's objective is reported to the Optuna trial through its storage; a
    pruned trial stops, its run ends KILLED with the tag ``optuna.state=PRUNED``, and
    :class:`optuna.TrialPruned` is raised.

    Raises:
        NativeCrashError: the training process died (its run ends FAILED).
    """
    killed_on: tuple[type[BaseException], ...] = ()
    if link is not None:
        import optuna

        killed_on = (optuna.TrialPruned,)
    with tracking.open_run(
        cfg.mlflow.experiment_name,
        run_name,
        parent_run_id=parent_run_id,
        tags=tags,
        killed_on=killed_on,
    ) as run_id:
        tracking.log_params(flatten(cfg, JOB_SECTIONS))
        if link is not None:  # before training: a crashed trial still names its run
            link.set_user_attr("mlflow_run_id", run_id)
        try:
            result = call_in_child(
                train_in_child, cfg, preprocess, run_id, link, os.getpid(), preload=CHILD_PRELOAD
            )
        except NativeCrashError:
            if link is not None:
                tracking.set_tags({"optuna.state": "FAIL"})
            raise
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

            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run}")
    log.info(
        "%s: val_accuracy %.4f, val_loss %.4f (best epoch %d of %d)",
        run_name,
        result.val_accuracy,
        result.val_loss,
        result.best_epoch,
        result.epochs_run,
    )
    return result


def train_in_child(
    cfg: Config, preprocess: Path, run_id: str, link: TrialLink | None, holder: int
) -> JobResult:
    """The child's part: open the shards, train under the loop's callbacks, report, return.

    No checkpoint: a killed trial is retried whole. Early stopping, the kept epoch and the
    per-epoch logging are the train stage's own (the loop's callbacks).
    """
    import resource

    from imgclf.sweeps.trial import pruning_callback
    from imgclf.training import TrainingState, fit, kept_metrics, prepare

    data, classes = load_rows(cfg, preprocess)
    trial = link.open() if link is not None else None
    pruner = None
    if trial is not None and link is not None and link.objective and link.pruner:
        pruner = pruning_callback(trial, link.objective)
    state = TrainingState()
    # Reopened by id: this process logs each epoch into the run its parent opened and ends.
    # The parent stays the run's holder (pid tag): it outlives this child, which dies with it.
    with tracking.open_run(cfg.mlflow.experiment_name, "job", run_id=run_id):
        tracking.set_tags({tracking.PID_TAG: str(holder)})
        _test_segfault(link)
        model, train_ds, val_ds = prepare(cfg, data, len(classes))
        n_params = int(model.count_params())
        fit(model, train_ds, val_ds, cfg.train, state=state, callbacks=[pruner] if pruner else [])
    kept = kept_metrics(state.history, state.best_epoch - 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if trial is not None:
        trial.set_user_attr("epochs_run", state.epochs_done)
        trial.set_user_attr("rss_mb", round(peak, 1))
    return JobResult(
        run_id=run_id,
        val_accuracy=kept["val_accuracy"],
        val_loss=kept["val_loss"],
        best_epoch=state.best_epoch,
        epochs_run=state.epochs_done,
        n_params=n_params,
        pruned=pruner is not None and pruner.pruned_at is not None,
        peak_rss_mb=round(peak, 1),
    )


def _test_segfault(link: TrialLink | None) -> None:
    wanted = os.environ.get(ENV_TEST_SEGFAULT, "")
    which = {w.strip() for w in wanted.split(",") if w.strip()}
    if "all" in which or (link is not None and str(link.number) in which):
        os.kill(os.getpid(), signal.SIGSEGV)
