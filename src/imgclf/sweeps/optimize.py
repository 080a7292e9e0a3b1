"""The Optuna loop behind the ``imgclf_optuna`` sweeper: trials until the study is full."""

from __future__ import annotations

import gc
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import tracking
from imgclf.lineage import lineage_tags
from imgclf.sweeps.job import STATE, TrialLink

log = logging.getLogger(__name__)

PARENT_WAIT_S = 60.0


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

    from imgclf.sweeps import report
    from imgclf.sweeps import study as st

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
            best = report.best_trial(study)
            value = best.value if best else None
            return SweepOutcome(settings.study_name, done, ran, value, None, parent, restart=True)
        study.optimize(objective, n_trials=1, catch=(FloatingPointError, _Surplus))
        ran += 1
        gc.collect()
    done, running = st.count_trials(study)
    path = None
    if best_config is not None and report.write_best_config(best_config, study, is_group):
        path = best_config
    try:
        report.log_study_report(study, parent)
    finally:
        if running == 0:
            tracking.end_run_by_id(parent)
    STATE.summary_printed = True
    print(report.summary_text(study))
    print(f"MLflow parent run {parent}" + (f"; best config: {path}" if path else ""))
    sys.stdout.flush()
    best = report.best_trial(study)
    return SweepOutcome(settings.study_name, done, ran, best.value if best else None, path, parent)


def _study_parent_run(study: Any, created: bool, experiment_name: str, url: str) -> str:
    """The study's MLflow parent run: opened by the study's creator, reopened by the others."""
    from imgclf.sweeps import study as st

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
    parent = tracking.open_run(
        experiment_name, f"optuna-{study.study_name}", run_id=run_id, tags=tags, active=False
    ).run_id
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
