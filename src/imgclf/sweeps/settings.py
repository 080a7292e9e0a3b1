"""The Optuna sweeper's settings (``hydra.sweeper``), free of heavy imports.

The Hydra plugin module registers :class:`StudySettings` (plus its own keys) as its structured
config and Hydra imports that module at every start, so this module imports nothing but the
standard library; :mod:`imgclf.study` turns the settings into Optuna objects.
"""

import logging
from dataclasses import dataclass, field

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}


class SweepConfigError(ImgclfError, ValueError):
    """The sweep settings are invalid or disagree with the stored study; the message says which."""


@dataclass
class SamplerSettings:
    name: str = "tpe"  # tpe | random
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
    storage: str | None = None
    objective: str = "val_accuracy"
    direction: str = "maximize"
    n_trials: int = 20
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 1
    max_trials_per_process: int = 0  # 0: no limit; else the sweeper restarts itself after that

    def check(self) -> None:
        """Fail before any work on a setting that cannot work, naming it."""
        if self.objective not in OBJECTIVES:
            raise SweepConfigError(
                f"hydra.sweeper.objective={self.objective!r}: must be one of {list(OBJECTIVES)}"
            )
        if self.direction not in ("maximize", "minimize"):
            raise SweepConfigError("hydra.sweeper.direction: must be maximize or minimize")
        if self.direction != OBJECTIVES[self.objective]:
            log.warning(
                "%s is usually %sd, not %sd",
                self.objective,
                OBJECTIVES[self.objective].removesuffix("e"),
                self.direction.removesuffix("e"),
            )
        if self.n_trials < 1:
            raise SweepConfigError("hydra.sweeper.n_trials: must be >= 1")
        if self.sampler.name not in ("tpe", "random"):
            raise SweepConfigError("hydra.sweeper.sampler.name: must be tpe or random")
        if self.pruner.name not in ("median", "hyperband", "none"):
            raise SweepConfigError("hydra.sweeper.pruner.name: must be median, hyperband or none")
        if self.grace_period <= self.heartbeat_interval:
            raise SweepConfigError("hydra.sweeper.grace_period: must exceed heartbeat_interval")
