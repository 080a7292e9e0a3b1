"""The Optuna loop behind the ``imgclf_optuna`` sweeper: ask, launch, tell until the study is full.

The sweeper asks the study for a batch of trials (as many as the launcher runs at once), turns
each into Hydra overrides plus a :class:`~imgclf.sweeps.trial.TrialLink` in the job's
environment, launches the batch with whatever launcher Hydra is configured with, and tells each
trial its result. The job reaches its trial through the storage only, so the basic launcher
(in-process), joblib's worker processes and submitit's jobs all work, pruning included.

A worker runs until the study holds ``n_trials`` done (COMPLETE or PRUNED) trials, counting
those of earlier launches and of other workers: it waits for trials in flight elsewhere, and
fails and retries the trials of a worker that died (heartbeats). It gives up, saying so and
exiting non-zero, only once more than ``max_failures`` trials have failed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from imgclf import tracking
from imgclf.sweeps import report
from imgclf.sweeps import study as st
from imgclf.sweeps.settings import StudySettings, SweepConfigError
from imgclf.sweeps.space import grid_values, parse_search_space, suggest
from imgclf.sweeps.tell import tell_failed, tell_result
from imgclf.sweeps.trial import ENV_TRIAL, TrialLink
from imgclf.sweeps.workers import Heartbeat, on_stale_trial, study_parent_run

log = logging.getLogger(__name__)


class StudyIncompleteError(RuntimeError):
    """The worker stops while the study has fewer than ``n_trials`` done trials."""


@dataclass
class SweepOutcome:
    study_name: str
    done: int
    ran_here: int
    best_values: list[float] | None
    best_config: Path | None
    parent_run_id: str


@dataclass
class Launch:
    """How the sweeper runs a batch: Hydra's launcher, and how jobs name their folders."""

    run: Callable[[list[list[str]], int], Sequence[Any]]  # (overrides per job, first index)
    batch_size: int
    subdir_per_trial: bool  # hydra.sweep.subdir is Hydra's default ${hydra.job.num}


def optimize(
    settings: StudySettings,
    params: Mapping[str, str],
    arguments: Sequence[str],
    *,
    launch: Launch,
    experiment_name: str | None,
    max_epochs: int | None,
    best_config: Path | None,
    is_group: Callable[[str], bool],
) -> SweepOutcome:
    """Run trials until the study holds ``n_trials`` done trials; report it on its parent run.

    Raises:
        SweepConfigError: a setting or a job's return value cannot work (names which).
        StudyIncompleteError: more than ``max_failures`` trials failed before it was full.
    """
    settings.check()
    space, fixed = parse_search_space(params, arguments)
    if not space:
        raise SweepConfigError(
            "nothing to search: give hydra.sweeper.params (e.g. sweep=cnn) or choice()/"
            "interval() overrides"
        )
    grid = grid_values(space) if settings.sampler.name == "grid" else None
    n_trials = settings.n_trials
    if grid is not None and math.prod(len(v) for v in grid.values()) < n_trials:
        n_trials = math.prod(len(v) for v in grid.values())
        log.info("the grid has %d points: n_trials capped to it", n_trials)
    url = st.storage_url(settings.storage)
    experiment = experiment_name or settings.study_name
    storage = st.make_storage(
        url,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        on_stale=on_stale_trial(settings.max_retry, experiment),
    )
    pruner = st.make_pruner(settings.pruner, max_epochs)
    study, created = st.open_study(
        settings, storage, st.make_sampler(settings.sampler, grid), pruner
    )
    parent = study_parent_run(study, created, experiment, url)
    report.log_search_space(parent, settings, space, url)
    log.info(
        "study %r in %s: %d/%d done; searching %s",
        settings.study_name,
        st.redact(url),
        st.count_trials(study)[0],
        n_trials,
        ", ".join(space),
    )
    link_base = TrialLink(
        storage=url,
        study_name=settings.study_name,
        number=-1,
        objective=(settings.objectives() or [""])[0] or None if settings.prunes() else None,
        pruner=vars(settings.pruner) if settings.prunes() else None,
        max_epochs=max_epochs,
        parent_run_id=parent,
    )
    heartbeat = Heartbeat(storage, settings.heartbeat_interval)
    try:
        ran, complete = _loop(
            study, settings, n_trials, space, fixed, launch, link_base, heartbeat, experiment
        )
    except BaseException as exc:  # the parent run ends truthfully unless others still run
        if not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            tracking.end_run_by_id(parent, status)
        raise
    return _finish(study, settings, parent, complete, ran, best_config, is_group, n_trials)


def _loop(
    study: optuna.Study,
    settings: StudySettings,
    n_trials: int,
    space: Mapping[str, Any],
    fixed: list[str],
    launch: Launch,
    link_base: TrialLink,
    heartbeat: Heartbeat,
    experiment: str,
) -> tuple[int, bool]:
    """Ask, launch and tell until the study is full or failed; (trials run here, complete)."""
    ran, complete = 0, False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        done, _, failed = st.count_trials(study)
        running = sum(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))
        if done >= n_trials:
            complete = True
            break
        if failed > settings.failures_allowed():
            break
        free = min(launch.batch_size, n_trials - done - running)
        if free <= 0:  # the rest is in flight in other workers: wait, or retry a dead one's
            time.sleep(min(5.0, settings.heartbeat_interval))
            continue
        batch = _ask(study, free, n_trials, space, fixed, heartbeat)
        if batch:
            _run_batch(study, batch, launch, link_base, settings, heartbeat, experiment)
            ran += len(batch)
    return ran, complete


def _ask(
    study: optuna.Study,
    n: int,
    n_trials: int,
    space: Mapping[str, Any],
    fixed: list[str],
    heartbeat: Heartbeat,
) -> list[tuple[optuna.Trial, list[str]]]:
    """Up to ``n`` new trials with their overrides (a retried trial's stored parameters first)."""
    batch = []
    for _ in range(n):
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        heartbeat.add(trial._trial_id)  # a trial with no beat is never found stale
        if st.is_surplus(study, trial.number, n_trials):
            # Two workers saw the same free slot; the later-numbered trial never trains.
            trial.set_user_attr("surplus", True)
            heartbeat.remove(trial._trial_id)
            study.tell(trial, state=TrialState.FAIL)
            break
        try:
            overrides = [*fixed, *suggest(trial, space)]
        except ValueError as exc:  # Optuna: a parameter of another kind than in earlier trials
            tell_failed(study, trial, str(exc))
            heartbeat.remove(trial._trial_id)
            raise SweepConfigError(
                f"{_changed_param(study, space)}: {exc} Use another study_name for a new space"
            ) from exc
        trial.set_user_attr("overrides", overrides)
        batch.append((trial, overrides))
    return batch


def _changed_param(study: optuna.Study, space: Mapping[str, Any]) -> str:
    """Which parameter the study searched with another distribution than ``space`` says."""
    for t in study.get_trials(deepcopy=False):
        for key, dist in t.distributions.items():
            new = space.get(key)
            if new is None:
                continue
            if type(dist) is not type(new) or (hasattr(dist, "choices") and dist != new):
                return f"{key} was searched as {dist} in this study, now {new}"
    return "the search space changed"


def _run_batch(
    study: optuna.Study,
    batch: list[tuple[optuna.Trial, list[str]]],
    launch: Launch,
    link_base: TrialLink,
    settings: StudySettings,
    heartbeat: Heartbeat,
    experiment: str,
) -> None:
    from dataclasses import replace

    from imgclf.sweeps.space import quote

    jobs = []
    for trial, overrides in batch:
        link = replace(link_base, number=trial.number)
        extra = [f"++hydra.job.env_set.{ENV_TRIAL}={quote(link.to_env())}"]
        if launch.subdir_per_trial:  # unique across workers sharing a sweep dir
            extra.append(f"hydra.sweep.subdir={trial.number}")
        jobs.append([*overrides, *extra])
    try:
        with heartbeat.running():
            returns: Sequence[Any] = launch.run(jobs, batch[0][0].number)
    except BaseException as exc:
        for trial, _ in batch:
            tell_failed(study, trial, f"launcher: {type(exc).__name__}: {exc}")
            heartbeat.remove(trial._trial_id)
        if isinstance(exc, Exception) and not isinstance(exc, SweepConfigError):
            log.error("the launcher failed for trials %s: %s", [t.number for t, _ in batch], exc)
            return  # e.g. a joblib worker killed by a signal: those trials FAIL, the sweep goes on
        raise
    for (trial, _), ret in zip(batch, returns, strict=True):
        heartbeat.remove(trial._trial_id)
        tell_result(study, trial, ret, settings, experiment, link_base.parent_run_id)


def _finish(
    study: optuna.Study,
    settings: StudySettings,
    parent: str,
    complete: bool,
    ran: int,
    best_config: Path | None,
    is_group: Callable[[str], bool],
    n_trials: int,
) -> SweepOutcome:
    done, running, failed = st.count_trials(study)
    path = None
    if best_config is not None and report.write_best_config(
        best_config, study, is_group, settings.pareto_tolerance
    ):
        path = best_config
    try:
        report.log_study_report(study, parent, settings.pareto_tolerance)
    finally:
        if running == 0:
            tracking.end_run_by_id(parent, "FINISHED" if complete else "FAILED")
    print(report.summary_text(study, settings.pareto_tolerance))
    print(f"MLflow parent run {parent}" + (f"; best config: {path}" if path else ""))
    sys.stdout.flush()
    if not complete:
        raise StudyIncompleteError(
            f"study {study.study_name!r} is incomplete: {done}/{n_trials} trials done, "
            f"{failed} failed (hydra.sweeper.max_failures={settings.failures_allowed()}); "
            "see the FAIL trials' error attribute and their MLflow runs"
        )
    best = report.chosen_trial(study, settings.pareto_tolerance)
    return SweepOutcome(
        settings.study_name, done, ran, list(best.values) if best else None, path, parent
    )
