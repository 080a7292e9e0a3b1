"""Telling Optuna how a launched trial ended: its objective values, PRUNED, or FAIL with why."""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from imgclf.sweeps.settings import StudySettings, SweepConfigError
from imgclf.sweeps.workers import trial_run

log = logging.getLogger(__name__)


def tell_result(
    study: optuna.Study,
    trial: optuna.Trial,
    ret: Any,
    settings: StudySettings,
    experiment: str,
    parent: str | None,
) -> None:
    """Record a finished job in the study: its values, PRUNED, or FAIL with the reason."""
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.COMPLETED:
        try:
            values = settings.values_of(ret.return_value)
        except SweepConfigError:
            tell_failed(study, trial, "the job's return value holds no objective")
            raise
        if all(math.isfinite(v) for v in values):
            study.tell(trial, values)
        else:
            tell_failed(study, trial, f"objective not finite: {values}")
    else:
        # JobReturn.return_value would re-raise; the job's own exception is kept here.
        exc = ret._return_value
        if isinstance(exc, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            tell_failed(study, trial, f"{type(exc).__name__}: {exc}")
    frozen = study._storage.get_trial(trial._trial_id)
    if "mlflow_run_id" not in frozen.user_attrs and parent is not None:
        trial_run(frozen, study.study_name, experiment, parent, settings.objectives())


def tell_failed(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    try:
        trial.set_user_attr("error", reason.splitlines()[0][:500] if reason else "")
        study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        log.debug("trial %d already finished", trial.number)
