"""What lets several sweep workers share one study: heartbeats, retries, runs in MLflow.

- :class:`Heartbeat`: the worker beats for the trials it launched, while their jobs run in
  whatever process the launcher chose; a dead worker's trials go stale.
- :func:`on_stale_trial`: a stale trial is failed (by Optuna), retried with exactly its
  parameters (a WAITING trial the next ``ask`` pops), and its MLflow run marked FAILED.
- :func:`study_parent_run`: the study's MLflow parent run, opened by the study's creator and
  joined by every other worker; :func:`trial_run` records a trial whose job logged no run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from imgclf import tracking
from imgclf.lineage import lineage_tags
from imgclf.sweeps import study as st

log = logging.getLogger(__name__)

PARENT_WAIT_S = 60.0


class Heartbeat:
    """Records a heartbeat for each trial in flight, every ``interval`` seconds, in a thread."""

    def __init__(self, storage: Any, interval: int) -> None:
        self._storage = storage
        self._interval = interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.add(trial_id)
        self._storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Beat in the background while the block (a launched batch) runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._interval):
                with self._lock:
                    ids = list(self._ids)
                for trial_id in ids:
                    try:
                        self._storage.record_heartbeat(trial_id)
                    except Exception as exc:  # noqa: BLE001 - one missed beat is harmless
                        log.debug("heartbeat for trial id %d failed: %s", trial_id, exc)

        thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def on_stale_trial(max_retry: int, experiment_name: str) -> Callable[[Any, FrozenTrial], None]:
    """Heartbeat-stale trial: mark its MLflow run FAILED and retry its parameters.

    The retry is a WAITING trial holding the stale trial's parameters and distributions, and
    nothing else of it (its user attributes named the dead trial's run): ``ask`` pops it and
    every ``suggest`` returns the stored value, which is what the job then trains.
    """

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        log.warning("trial %d lost its heartbeat (killed worker?): FAIL", trial.number)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracking.configure(experiment_name)
            tracking.set_run_tags(run_id, {"optuna.state": "FAIL"})
            tracking.end_run_by_id(run_id, "FAILED")
        if len(history) > max_retry:
            log.warning("trial %d: retried %d times already; not again", history[0], max_retry)
            return
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
        )

    return on_stale


def study_parent_run(study: optuna.Study, created: bool, experiment_name: str, url: str) -> str:
    """The study's MLflow parent run: opened by the study's creator, reopened by the others."""
    tags = {
        **lineage_tags(),
        "stage": "sweep",
        "optuna.study": study.study_name,
        "optuna.storage": st.redact(url),
    }
    # The creator sets the id before it asks its first trial, so the trials are read first: a
    # study without trials then may still get its id (wait for it); one that had trials before
    # the id was read without it was made outside a sweep (or its creator died): do not wait.
    # Read the other way round, a creator that set the id and asked a trial between the two
    # reads looked like the latter, and this worker opened a second parent run over the first.
    fresh = not created and not study.get_trials(deepcopy=False)
    run_id = study.user_attrs.get(st.PARENT_ATTR)
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


_RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}


def trial_run(
    trial: FrozenTrial,
    study_name: str,
    experiment_name: str,
    parent: str,
    objectives: list[str] | None,
) -> None:
    """A child run for a trial whose job logged none (any Hydra app): params, values, state."""
    run = tracking.open_run(
        experiment_name,
        f"trial-{trial.number}-{study_name}",
        parent_run_id=parent,
        tags={
            "stage": "sweep",
            "optuna.study": study_name,
            "optuna.trial": str(trial.number),
            "optuna.state": trial.state.name,
        },
        active=False,
    )
    metrics = {}
    if trial.values is not None:
        names = objectives or [f"value_{i}" if i else "value" for i in range(len(trial.values))]
        metrics = dict(zip(names, trial.values, strict=False))
    tracking.log_to(run.run_id, params=trial.params, metrics=metrics)
    tracking.end_run_by_id(run.run_id, _RUN_STATUS.get(trial.state, "FAILED"))
