"""``imgclf-train``: the Hydra app over ``conf/``, and a grid sweep's parent run.

``imgclf-train`` composes ``conf/`` like ``dvc exp run`` does, validates it against the typed
schema, trains on the train split and scores on the validation split (never the test set). One
job is one MLflow run; in a sweep (``-m``) every job is a child run of one parent run per sweep.

- Grid: ``imgclf-train -m optimizer=adam,sgd model.filters=16,32`` (Hydra's basic sweeper).
  The parent run belongs to :class:`MlflowSweepCallback` (``hydra.callbacks`` in config.yaml),
  which ends it and prints the table of jobs.
- Optuna: ``imgclf-train -m hydra/sweeper=imgclf_optuna sweep=cnn`` (the plugin in
  ``hydra_plugins.imgclf_optuna_sweeper`` runs :func:`imgclf.sweeps.optimize.optimize`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from imgclf import interrupts, tracking
from imgclf.compose import ENV_CONF_DIR, FIX_OVERRIDE, conf_dir
from imgclf.errors import EXIT_USER_ERROR, ImgclfError
from imgclf.lineage import lineage_tags
from imgclf.params import config_from_dict
from imgclf.sweeps.crossval import check_pool, run_cv_job
from imgclf.sweeps.job import preprocess_dir, run_job
from imgclf.sweeps.trial import TrialLink

log = logging.getLogger(__name__)


# --- the Hydra app ----------------------------------------------------------------------------

ENV_GRID_PARENT = "IMGCLF_GRID_PARENT_RUN_ID"


def task(dcfg: DictConfig) -> dict[str, float]:
    """One Hydra job: validate the composed config, train, score on val, log the run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    raw = OmegaConf.to_container(dcfg, resolve=True)
    assert isinstance(raw, dict)
    cfg = config_from_dict(
        {str(k): v for k, v in raw.items()}, source="conf/ + overrides", fix=FIX_OVERRIDE
    )
    if cfg.train.refit and not cfg.cv.folds:  # scored on validation: must not train on it
        log.info("imgclf-train validates every job: train.refit applies to the train stage only")
        cfg = replace(cfg, train=replace(cfg.train, refit=False))
    hc = HydraConfig.get()
    overrides = [str(o) for o in hc.overrides.task]
    multirun = hc.mode == RunMode.MULTIRUN
    # The sweeper or the grid callback hands the job its parent run and trial through the
    # environment, which every launcher passes on (in-process, joblib workers, submitit).
    link = TrialLink.from_env()
    check_pool(cfg, sweeping=multirun or link is not None)
    parent = None
    if link is not None:
        parent = link.parent_run_id
        run_name = f"trial-{link.number}-{link.study_name}"
    elif multirun:
        parent = os.environ.get(ENV_GRID_PARENT)
        run_name = f"job-{hc.job.num}"
    else:
        run_name = "imgclf-train"
    tags = {
        **lineage_tags(),
        "stage": "sweep" if multirun else "imgclf-train",
        "imgclf.overrides": " ".join(overrides)[:5000],
    }
    if link is not None:
        tags |= {"optuna.study": link.study_name, "optuna.trial": str(link.number)}
    elif multirun:
        tags["imgclf.job"] = str(hc.job.num)
    job = run_cv_job if cfg.cv.folds else run_job
    result = job(
        cfg, preprocess_dir(), parent_run_id=parent, run_name=run_name, tags=tags, link=link
    )
    return result.metrics()


def _is_grid(config: DictConfig) -> bool:
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    return "imgclf_optuna" not in target


class MlflowSweepCallback(Callback):
    """A grid sweep's parent run: opened before its jobs, ended after with a table of them.

    Wired as ``hydra.callbacks`` in config.yaml; the Optuna sweeper keeps its own parent run.
    The jobs find the parent in ``$IMGCLF_GRID_PARENT_RUN_ID``, inherited by any launcher's
    processes.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_grid(config):
            return
        experiment = str(OmegaConf.select(config, "mlflow.experiment_name"))
        sweep_dir = str(config.hydra.sweep.dir)
        os.environ[ENV_GRID_PARENT] = tracking.open_run(
            experiment,
            f"sweep-{Path(sweep_dir).name}",
            tags={**lineage_tags(), "stage": "sweep", "imgclf.sweep_dir": sweep_dir},
            active=False,  # its jobs are the active runs
        ).run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from imgclf.sweeps.report import format_table

        parent = os.environ.pop(ENV_GRID_PARENT, None)
        if parent is None:
            return
        tracking.end_run_by_id(parent)
        rows = [
            {
                "job": run["tags"].get("imgclf.job", ""),
                "status": run["status"],
                "val_accuracy": run["metrics"].get(
                    "best_val_accuracy", run["metrics"].get("cv_accuracy")
                ),
                "val_loss": run["metrics"].get("best_val_loss"),
                "epochs": run["metrics"].get("epochs_run"),
                "overrides": run["tags"].get("imgclf.overrides", ""),
            }
            for run in sorted(
                tracking.child_runs(parent), key=lambda r: int(r["tags"].get("imgclf.job", 0))
            )
        ]
        if rows:
            print(format_table(_varying_overrides(rows)))
        print(f"{len(rows)} jobs; MLflow parent run {parent}")
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

    from imgclf.console import quiet_startup

    quiet_startup()  # before anything imports TensorFlow: no C++ start-up chatter
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    conf = conf_dir()
    if not (conf / "config.yaml").is_file():
        sys.stderr.write(
            f"imgclf-train: {conf}/config.yaml not found; run it inside the project "
            f"or set {ENV_CONF_DIR}\n"
        )
        sys.exit(2)
    app = hydra.main(config_path=str(conf), config_name="config", version_base=None)(
        _one_line_errors(task)
    )
    try:
        with interrupts.handlers():  # SIGTERM unwinds like Ctrl-C: the job's run ends KILLED
            app()
    except KeyboardInterrupt as exc:  # the runs have ended KILLED: one line, not a traceback
        _end_grid_parent("KILLED")
        status, what = interrupts.exit_status(exc)
        sys.stderr.write(f"imgclf-train: {what}\n")
        sys.exit(status)
    except SystemExit as exc:  # Hydra reports a failed job and exits 1
        if exc.code not in (0, None):
            _end_grid_parent("FAILED")
        raise
    except BaseException:
        _end_grid_parent("FAILED")
        raise


def _one_line_errors(job: Callable[[DictConfig], dict[str, float]]) -> Callable[..., Any]:
    """An expected failure of a lone job or a grid job prints one line, not Hydra's traceback.

    An Optuna trial's is raised on instead: the study must record the trial FAILED.
    """

    @functools.wraps(job)
    def wrapper(dcfg: DictConfig) -> dict[str, float]:
        try:
            return job(dcfg)
        except ImgclfError as exc:
            if TrialLink.from_env() is not None:
                raise
            sys.stderr.write(f"imgclf-train: {exc}\n")
            sys.exit(EXIT_USER_ERROR)  # main() ends a grid sweep's parent run FAILED

    return wrapper


def _end_grid_parent(status: str) -> None:
    """A grid sweep that stops early ends its parent run truthfully, not left RUNNING."""
    parent = os.environ.pop(ENV_GRID_PARENT, None)
    if parent:
        try:
            tracking.end_run_by_id(parent, status)
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("could not mark sweep parent run %s %s", parent, status)
