"""Sweeps: the ``imgclf-train`` Hydra app, its jobs, and the Optuna loop behind the sweeper.

``imgclf-train`` composes ``conf/`` like ``dvc exp run`` does, validates it against the typed
schema, trains on the train split and scores on the validation split (never the test set). One
job is one MLflow run; in a sweep (``-m``) every job is a child run of one parent run per sweep.

- Grid: ``imgclf-train -m optimizer=adam,sgd model.filters=16,32`` (Hydra's basic sweeper).
  The parent run belongs to :class:`MlflowSweepCallback` (``hydra.callbacks`` in config.yaml),
  which ends it and prints the table of jobs.
- Optuna: ``imgclf-train -m hydra/sweeper=imgclf_optuna sweep=cnn`` (the plugin in
  ``hydra_plugins.imgclf_optuna_sweeper`` runs :func:`optimize`). The parent run belongs to the
  study (its id is a study attribute), so a relaunch or a second process adds to the same one.

Jobs run in this process, launched by Hydra's basic launcher, one after the other; the sweeper
and the callback reach them through :data:`STATE` (the trial to report to, the parent run).
That is the one piece of global state here, and it is why pruning needs the in-process
launcher: parallelism comes from several sweep processes sharing one study instead.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgclf import interrupts, tracking
from imgclf.config import Config, ConfigError, config_from_dict, flatten
from imgclf.fileio import read_json
from imgclf.lineage import lineage_tags, project_root

log = logging.getLogger(__name__)

ENV_CONF_DIR = "IMGCLF_CONF_DIR"
ENV_PREPROCESS_DIR = "IMGCLF_PREPROCESS_DIR"
JOB_SECTIONS = ("data", "model", "optimizer", "augment", "train")
PARENT_WAIT_S = 60.0


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
    return Path(env).resolve() if env else project_root() / "artifacts" / "preprocess"


def load_arrays(cfg: Config, folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The preprocess stage's cached train/val tensors, loaded once per process.

    The test split is dropped here, so no job can score on it by mistake.

    Raises:
        FileNotFoundError: the cache is missing (names the command that makes it).
        ConfigError: the cache holds another image size than this job asks for.
    """
    from imgclf.formats import read_fit
    from imgclf.stages.preprocess import load_dataset

    npz = folder / "dataset.npz"
    if not npz.is_file():
        raise FileNotFoundError(
            f"{npz} not found: sweeps train on the preprocess stage's tensors; run "
            "`dvc pull data.dvc && dvc repro preprocess` first (or set IMGCLF_PREPROCESS_DIR)"
        )
    key = (str(npz), npz.stat().st_mtime)
    if key not in _ARRAYS:
        _ARRAYS.clear()
        arrays = load_dataset(npz)
        subset = {k: v for k, v in arrays.items() if not k.endswith("_test")}
        _ARRAYS[key] = (subset, read_json(folder / "classes.json"))
    arrays, classes = _ARRAYS[key]
    size = tuple(arrays["x_train"].shape[1:3])
    wanted = (cfg.data.image_height, cfg.data.image_width)
    if size != wanted:
        raise ConfigError(
            f"{npz} holds {size[0]}x{size[1]} images but this job asks for "
            f"data.image_height={wanted[0]} data.image_width={wanted[1]}: set those in conf/ "
            "and `dvc repro preprocess`, or do not sweep them"
        )
    fit = read_fit(folder)
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

    from imgclf.stages.train import best_epoch_index, fit

    killed_on: tuple[type[BaseException], ...] = ()
    pruner_cb = None
    if link is not None:
        import optuna

        from imgclf.study import pruning_callback

        killed_on = (optuna.TrialPruned,)
        pruner_cb = pruning_callback(link.trial, link.objective)
    history: dict[str, list[float]] = {}
    with tracking.start_child_run(
        cfg.mlflow.experiment_name,
        parent_run_id=parent_run_id,
        run_name=run_name,
        tags=tags,
        killed_on=killed_on,
    ) as run_id:
        tracking.log_params(flatten(cfg, JOB_SECTIONS))
        if link is not None:
            link.trial.set_user_attr("mlflow_run_id", run_id)
        callbacks = [tracking.keras_callback(), *([pruner_cb] if pruner_cb else [])]
        try:
            model, history = fit(cfg, arrays, len(classes), callbacks=callbacks)
            del model
        finally:
            # Each trial builds a new graph; without this, TensorFlow keeps every old one.
            keras.backend.clear_session()
            gc.collect()
            _record_trial_resources(link, history)
        if any(np.isnan(v) for v in history.get("loss", [])):
            raise FloatingPointError("training diverged (NaN loss)")
        best = best_epoch_index(history, cfg.train.monitor)
        result = JobResult(
            run_id=run_id,
            val_accuracy=history["val_accuracy"][best],
            val_loss=history["val_loss"][best],
            best_epoch=best + 1,
            epochs_run=len(history["loss"]),
            pruned=pruner_cb is not None and pruner_cb.pruned_at is not None,
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


def _record_trial_resources(link: TrialLink | None, history: dict[str, list[float]]) -> None:
    from imgclf.study import rss_mb

    rss = rss_mb()
    log.info("memory after job: %.0f MiB resident", rss)
    if link is not None:
        link.trial.set_user_attr("epochs_run", len(history.get("loss", [])))
        link.trial.set_user_attr("rss_mb", round(rss, 1))


# --- the Hydra app ----------------------------------------------------------------------------


def task(dcfg: DictConfig) -> dict[str, float]:
    """One Hydra job: validate the composed config, train, score on val, log the run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    raw = OmegaConf.to_container(dcfg, resolve=True)
    assert isinstance(raw, dict)
    cfg = config_from_dict({str(k): v for k, v in raw.items()}, source="imgclf-train")
    if cfg.train.refit:  # a job is scored on validation, so it must not train on it
        log.info("imgclf-train validates every job: train.refit applies to the train stage only")
        cfg = replace(cfg, train=replace(cfg.train, refit=False))
    hc = HydraConfig.get()
    overrides = [str(o) for o in hc.overrides.task]
    multirun = hc.mode == RunMode.MULTIRUN
    arrays, classes = load_arrays(cfg, preprocess_dir())
    link = STATE.link
    parent = None
    if multirun:
        parent = STATE.parent_run_id or _open_grid_parent(cfg, str(hc.sweep.dir))
    if link is not None:
        run_name = f"trial-{link.trial.number}"
    else:
        run_name = f"job-{hc.job.num}" if multirun else "imgclf-train"
    tags = {
        **lineage_tags(),
        "stage": "sweep" if multirun else "imgclf-train",
        "imgclf.overrides": " ".join(overrides)[:5000],
    }
    if link is not None:
        tags |= {"optuna.study": link.study_name, "optuna.trial": str(link.trial.number)}
    result = run_job(
        cfg, arrays, classes, parent_run_id=parent, run_name=run_name, tags=tags, link=link
    )
    STATE.rows.append(
        {
            "job": hc.job.num if multirun else 0,
            "val_accuracy": result.val_accuracy,
            "val_loss": result.val_loss,
            "epochs": result.epochs_run,
            "overrides": " ".join(overrides),
        }
    )
    return result.metrics()


def _open_grid_parent(cfg: Config, sweep_dir: str) -> str:
    """The parent run of a grid sweep, created by its first job (one sweep = one process)."""
    STATE.parent_run_id = tracking.open_parent_run(
        cfg.mlflow.experiment_name,
        run_name=f"sweep {Path(sweep_dir).name}",
        tags={**lineage_tags(), "stage": "sweep", "imgclf.sweep_dir": sweep_dir},
    )
    STATE.parent_owned = True
    return STATE.parent_run_id


class MlflowSweepCallback(Callback):
    """Ends a grid sweep's parent run and prints the table of its jobs (``hydra.callbacks``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.parent_run_id = None
        STATE.parent_owned = False
        STATE.rows.clear()
        STATE.summary_printed = False

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from imgclf.study import format_table

        if STATE.parent_owned and STATE.parent_run_id:
            tracking.end_run_by_id(STATE.parent_run_id)
            STATE.parent_owned = False
        if not STATE.summary_printed and STATE.rows:
            print(format_table(_varying_overrides(STATE.rows)))
            print(f"{len(STATE.rows)} jobs; MLflow parent run {STATE.parent_run_id}")
            sys.stdout.flush()


def _varying_overrides(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs' rows with only the overrides that differ between jobs (what the grid swept)."""
    split = [dict(o.split("=", 1) for o in r["overrides"].split() if "=" in o) for r in rows]
    keys = {k for d in split for k in d}
    varying = [k for k in sorted(keys) if len({d.get(k) for d in split}) > 1]
    return [
        {**r, "overrides": " ".join(f"{k}={d.get(k)}" for k in varying)}
        for r, d in zip(rows, split, strict=True)
    ]


def main() -> None:
    """Entry point of ``imgclf-train``: Hydra over the project's ``conf/``."""
    import hydra

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    conf = conf_dir()
    if not (conf / "config.yaml").is_file():
        sys.stderr.write(
            f"imgclf-train: {conf}/config.yaml not found; run it inside the project "
            f"or set {ENV_CONF_DIR}\n"
        )
        sys.exit(2)
    app = hydra.main(config_path=str(conf), config_name="config", version_base=None)(task)
    try:
        with interrupts.handlers():  # SIGTERM unwinds like Ctrl-C: the job's run ends KILLED
            app()
    except KeyboardInterrupt:
        _end_grid_parent("KILLED")
        raise
    except SystemExit as exc:  # Hydra reports a failed job and exits 1
        if exc.code not in (0, None):
            _end_grid_parent("FAILED")
        raise
    except BaseException:
        _end_grid_parent("FAILED")
        raise


def _end_grid_parent(status: str) -> None:
    """A grid sweep that stops early ends its parent run truthfully, not left RUNNING."""
    if STATE.parent_owned and STATE.parent_run_id:
        STATE.parent_owned = False
        try:
            tracking.end_run_by_id(STATE.parent_run_id, status)
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("could not mark sweep parent run %s %s", STATE.parent_run_id, status)


# --- the Optuna loop (run by the imgclf_optuna sweeper) ---------------------------------------


@dataclass
class SweepOutcome:
    study_name: str
    done: int
    ran_here: int
    best_value: float | None
    best_config: Path | None
    parent_run_id: str
    restart: bool = False  # max_trials_per_process reached with trials still to run


def optimize(
    settings: Any,
    params: dict[str, str],
    arguments: Sequence[str],
    *,
    launch: Callable[[list[str], int], Any],
    experiment_name: str,
    max_epochs: int | None,
    best_config: Path | None,
    is_group: Callable[[str], bool],
) -> SweepOutcome:
    """Run trials until the study holds ``n_trials`` done (COMPLETE or PRUNED) trials.

    ``launch(overrides, job_idx)`` runs one Hydra job and returns its ``JobReturn``. The study
    is created or resumed in ``settings.storage``; the count includes trials from earlier
    launches and from other processes, so a relaunch tops the study up and parallel workers
    share the work. Trials RUNNING in a dead process are failed and retried by the heartbeat.
    """
    import optuna
    from hydra.core.utils import JobStatus

    from imgclf import study as st

    settings.check()
    space, fixed = st.parse_search_space(params, arguments)
    if not space:
        raise st.SweepConfigError(
            "nothing to search: give hydra.sweeper.params (e.g. sweep=cnn) or choice()/"
            "interval() overrides"
        )
    url = settings.storage or st.default_storage_url()
    on_stale = _on_stale_trial(settings.max_retry, experiment_name)
    storage = st.make_storage(
        url,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        on_stale=on_stale,
    )
    study, created = st.open_study(settings, storage, max_epochs)
    parent = _study_parent_run(study, created, experiment_name, url)
    STATE.parent_run_id, STATE.parent_owned = parent, False
    log.info(
        "study %r in %s: %d/%d done; searching %s",
        settings.study_name,
        st.redact(url),
        st.count_trials(study)[0],
        settings.n_trials,
        ", ".join(space),
    )

    class _Surplus(Exception):
        pass

    def objective(trial: optuna.Trial) -> float:
        if st.is_surplus(study, trial.number, settings.n_trials):
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the study already has its n_trials")
        overrides = [*fixed, *st.suggest(trial, space)]
        trial.set_user_attr("overrides", overrides)
        STATE.link = TrialLink(trial, settings.objective, settings.study_name)
        try:
            ret = launch(overrides, trial.number)
        finally:
            STATE.link = None
        if ret.status == JobStatus.FAILED:
            # JobReturn.return_value would also print "Error executing job" for a pruned trial
            raise ret._return_value
        return float(ret.return_value[settings.objective])

    ran = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        done, running = st.count_trials(study)
        if done + running >= settings.n_trials:
            break
        if settings.max_trials_per_process and ran >= settings.max_trials_per_process:
            # TensorFlow keeps ~20 MiB per trained model even after clear_session(); a fresh
            # process resumes the study with all of it given back.
            log.info("%d trials in this process: restarting it to free memory", ran)
            best = st.best_trial(study)
            value = best.value if best else None
            return SweepOutcome(settings.study_name, done, ran, value, None, parent, restart=True)
        study.optimize(objective, n_trials=1, catch=(FloatingPointError, _Surplus))
        ran += 1
        gc.collect()
    done, running = st.count_trials(study)
    path = None
    if best_config is not None and st.write_best_config(best_config, study, is_group):
        path = best_config
    try:
        st.log_study_report(study, parent)
    finally:
        if running == 0:
            tracking.end_run_by_id(parent)
    STATE.summary_printed = True
    print(st.summary_text(study))
    print(f"MLflow parent run {parent}" + (f"; best config: {path}" if path else ""))
    sys.stdout.flush()
    best = st.best_trial(study)
    return SweepOutcome(settings.study_name, done, ran, best.value if best else None, path, parent)


def _study_parent_run(study: Any, created: bool, experiment_name: str, url: str) -> str:
    """The study's MLflow parent run: opened by the study's creator, reopened by the others."""
    from imgclf import study as st

    tags = {
        **lineage_tags(),
        "stage": "sweep",
        "optuna.study": study.study_name,
        "optuna.storage": st.redact(url),
    }
    run_id = study.user_attrs.get(st.PARENT_ATTR)
    # A study created a moment ago by another process gets its parent run id right away; one
    # with trials but no id was made outside a sweep (or its creator died): do not wait then.
    fresh = not created and not study.get_trials(deepcopy=False)
    deadline = time.monotonic() + (PARENT_WAIT_S if fresh else 0)
    while run_id is None and time.monotonic() < deadline:  # the creator is about to set it
        time.sleep(1.0)
        run_id = study.user_attrs.get(st.PARENT_ATTR)
    parent = tracking.open_parent_run(
        experiment_name, run_id=run_id, run_name=f"optuna {study.study_name}", tags=tags
    )
    if parent != run_id:
        study.set_user_attr(st.PARENT_ATTR, parent)
    return parent


def _on_stale_trial(max_retry: int, experiment_name: str) -> Callable[[Any, Any], None]:
    """Heartbeat-stale trial: retry its parameters and mark its MLflow run FAILED."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def on_stale(study: Any, trial: Any) -> None:
        log.warning("trial %d lost its heartbeat (killed sweep?): FAIL, retrying", trial.number)
        retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracking.configure(experiment_name)
            tracking.set_run_tags(run_id, {"optuna.state": "FAIL"})
            tracking.end_run_by_id(run_id, "FAILED")

    return on_stale
