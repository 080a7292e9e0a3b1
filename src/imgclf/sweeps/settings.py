"""The Optuna sweeper's settings (``hydra.sweeper``), free of heavy imports.

The Hydra plugin module registers :class:`StudySettings` (plus its own keys) as its structured
config and Hydra imports that module at every start, so this module imports nothing but the
standard library; :mod:`imgclf.sweeps.study` turns the settings into Optuna objects.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

# The usual direction of objectives this project's jobs return, for a one-line warning only.
USUAL_DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize", "n_params": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


class SweepConfigError(ImgclfError, ValueError):
    """The sweep settings are invalid or disagree with the stored study; the message says which."""


@dataclass
class SamplerSettings:
    name: str = "tpe"  # tpe | random | grid (choice and range only; n_trials capped at its size)
    seed: int = 42
    n_startup_trials: int = 5  # tpe: random trials before the model kicks in


@dataclass
class PrunerSettings:
    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 3  # median: completed trials before anything is pruned
    n_warmup_steps: int = 2  # median: epochs before a trial can be pruned
    min_resource: int = 2  # hyperband: epochs every trial gets
    reduction_factor: int = 3  # hyperband


@dataclass
class StudySettings:
    """What the sweeper's config (``hydra.sweeper``) holds, minus the search space."""

    study_name: str = "imgclf"
    # An RDB URL every trial's process can reach (sqlite:///..., postgresql+psycopg://...);
    # null: $IMGCLF_SWEEP_STORAGE, else sqlite optuna.db beside a local MLflow store.
    storage: str | None = None
    # The job's return value to optimise: a key of the dict it returns, a list of keys (one per
    # direction), or null when it returns the number (or a list of numbers) itself.
    objective: Any = None
    direction: Any = "maximize"  # maximize | minimize, or a list: multi-objective
    n_trials: int = 20  # COMPLETE + PRUNED trials the study ends with
    n_jobs: int | None = None  # trials launched at once; null: the launcher's n_jobs, else 1
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 1  # a trial whose worker died is retried this often with its parameters
    max_failures: int | None = None  # more FAIL trials than this: workers give up; null: n_trials
    # Multi-objective best.yaml: among the Pareto-optimal trials within this distance of the best
    # first objective, the best on the second (then the third...); 0: the best first objective.
    pareto_tolerance: float = 0.0
    # The MLflow experiment of the study's parent run; null: the app's mlflow.experiment_name,
    # else the study name.
    experiment_name: str | None = None

    def directions(self) -> list[str]:
        """The direction of each objective (one for a single-objective study)."""
        raw = self.direction
        return [str(d) for d in raw] if isinstance(raw, list | tuple) else [str(raw)]

    def objectives(self) -> list[str] | None:
        """The keys of the job's return value to optimise, or None: it returns the number(s)."""
        if self.objective is None:
            return None
        raw = self.objective
        return [str(o) for o in raw] if isinstance(raw, list | tuple) else [str(raw)]

    def values_of(self, value: Any) -> list[float]:
        """The objective value(s) in what a job returned: a number, numbers, or a dict holding them.

        Raises:
            SweepConfigError: the value holds no objective (names the keys it does hold).
        """
        keys = self.objectives()
        n = len(self.directions())
        if isinstance(value, Mapping):
            if keys is None:
                raise SweepConfigError(
                    f"the job returned a dict with {sorted(map(str, value))}: set "
                    "hydra.sweeper.objective to the key (or keys) to optimise"
                )
            missing = [k for k in keys if k not in value]
            if missing:
                raise SweepConfigError(
                    f"hydra.sweeper.objective {missing} not in what the job returned: "
                    f"{sorted(map(str, value))}"
                )
            values = [value[k] for k in keys]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values = [value]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            values = list(value)
        else:
            raise SweepConfigError(
                f"the job returned {type(value).__name__}: return a number, a list of numbers "
                "(one per direction) or a dict holding hydra.sweeper.objective"
            )
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise SweepConfigError(f"the job's objective is not a number: {values}") from exc
        if len(floats) != n:
            raise SweepConfigError(
                f"the job returned {len(floats)} objective value(s) for {n} direction(s)"
            )
        return floats

    def failures_allowed(self) -> int:
        return self.n_trials if self.max_failures is None else self.max_failures

    def check(self) -> None:
        """Fail before any work on a setting that cannot work, naming it."""
        directions = self.directions()
        if not directions or any(d not in ("maximize", "minimize") for d in directions):
            raise SweepConfigError(
                "hydra.sweeper.direction: must be maximize, minimize or a list of them"
            )
        keys = self.objectives()
        if keys is not None and len(keys) != len(directions):
            raise SweepConfigError(
                f"hydra.sweeper.objective names {len(keys)} value(s) but direction has "
                f"{len(directions)}: give one objective key per direction"
            )
        for key, direction in zip(keys or [], directions, strict=False):
            usual = USUAL_DIRECTIONS.get(key)
            if usual is not None and usual != direction:
                log.warning("%s is usually %sd, not %sd", key, usual[:-1], direction[:-1])
        if self.n_trials < 1:
            raise SweepConfigError("hydra.sweeper.n_trials: must be >= 1")
        if self.n_jobs is not None and self.n_jobs < 1:
            raise SweepConfigError("hydra.sweeper.n_jobs: must be >= 1 (or null)")
        if self.sampler.name not in SAMPLERS:
            raise SweepConfigError(f"hydra.sweeper.sampler.name: must be one of {SAMPLERS}")
        if self.pruner.name not in PRUNERS:
            raise SweepConfigError(f"hydra.sweeper.pruner.name: must be one of {PRUNERS}")
        if self.grace_period <= self.heartbeat_interval:
            raise SweepConfigError("hydra.sweeper.grace_period: must exceed heartbeat_interval")
        if self.max_failures is not None and self.max_failures < 0:
            raise SweepConfigError("hydra.sweeper.max_failures: must be >= 0 (or null)")
        if self.pareto_tolerance < 0:
            raise SweepConfigError("hydra.sweeper.pareto_tolerance: must be >= 0")

    def prunes(self) -> bool:
        """Whether trials may be pruned: Optuna prunes single-objective studies only."""
        return self.pruner.name != "none" and len(self.directions()) == 1
