"""A job's way to its Optuna trial: through the study's storage, from any process.

The sweeper hands every job it launches a :class:`TrialLink` in the environment variable
``IMGCLF_OPTUNA_TRIAL`` (set through ``hydra.job.env_set``, so the basic launcher, the joblib
launcher's worker processes and submitit's jobs all get it). The job rebuilds the trial from the
storage (:func:`current_trial`), reports each epoch's value and asks ``should_prune`` there; the
sweeper, which may live in another process or on another machine, reads the same rows. Nothing
passes through memory.

Any Hydra app can prune the same way::

    trial = current_trial()            # None outside an imgclf_optuna sweep
    for epoch in range(epochs):
        ...
        if trial is not None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ENV_TRIAL = "IMGCLF_OPTUNA_TRIAL"


@dataclass(frozen=True)
class TrialLink:
    """Where a job's trial lives: storage URL, study, trial number, and how to prune it."""

    storage: str
    study_name: str
    number: int
    objective: str | None = None  # the value reported each epoch (single objective only)
    pruner: Mapping[str, Any] | None = None  # PrunerSettings as a dict; None: never prune
    max_epochs: int | None = None  # Hyperband's max resource
    parent_run_id: str | None = None  # the study's MLflow parent run

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrialLink | None:
        """The link the sweeper set for this job, or None outside an Optuna sweep."""
        raw = (os.environ if environ is None else environ).get(ENV_TRIAL)
        return cls(**json.loads(raw)) if raw else None

    def open(self) -> Any:
        """The live ``optuna.Trial``, rebuilt from the storage in this process."""
        import optuna

        from imgclf.sweeps.settings import PrunerSettings
        from imgclf.sweeps.study import make_pruner

        storage = _storage(self.storage)
        pruner = None
        if self.pruner:
            pruner = make_pruner(PrunerSettings(**self.pruner), self.max_epochs)
        study = optuna.load_study(
            study_name=self.study_name,
            storage=storage,
            # The job never samples (the sweeper did); a light sampler keeps the rebuild cheap.
            sampler=optuna.samplers.RandomSampler(),
            pruner=pruner or optuna.pruners.NopPruner(),
        )
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        return optuna.trial.Trial(study, trial_id)

    def set_user_attr(self, key: str, value: Any) -> None:
        """Set a user attribute of the trial straight in the storage (no Trial rebuilt)."""
        storage = _storage(self.storage)
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        storage.set_trial_user_attr(trial_id, key, value)


@functools.cache
def _storage(url: str) -> Any:
    """One storage per URL and process: opening one checks the schema (a second or so)."""
    from imgclf.sweeps.study import make_storage

    return make_storage(url)


def current_trial() -> Any:
    """This job's ``optuna.Trial`` (rebuilt from the storage), or None outside a sweep."""
    link = TrialLink.from_env()
    return link.open() if link is not None else None


def pruning_callback(trial: Any, monitor: str) -> Any:
    """A Keras callback reporting ``monitor`` each epoch to ``trial`` and stopping when pruned.

    It stops training rather than raising inside ``fit``, so Keras finishes the epoch cleanly
    (the loop has logged it); the job raises :class:`optuna.TrialPruned` after.
    """
    import keras

    class PruningCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(float(value)):
                return
            trial.report(float(value), step=epoch)
            if trial.should_prune():
                self.pruned_at = epoch
                self.model.stop_training = True

    return PruningCallback()
