"""The sweeper class and its structured config, registered as ``hydra/sweeper=imgclf_optuna``."""

# No `from __future__ import annotations` here: Hydra's plugin scan executes this module
# without registering it in sys.modules, and dataclasses then cannot resolve string annotations.
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from imgclf.sweeps.settings import PrunerSettings, SamplerSettings, StudySettings

log = logging.getLogger(__name__)


@dataclass
class ImgclfOptunaSweeperConf(StudySettings):
    """StudySettings (study, storage, objective, sampler, pruner, heartbeats) plus these keys."""

    _target_: str = "hydra_plugins.imgclf_optuna_sweeper.imgclf_optuna_sweeper.ImgclfOptunaSweeper"
    # Where the best overrides go; null: <primary conf dir>/experiment/best.yaml
    best_config: str | None = None
    # The search space: key -> Hydra override grammar (choice, range, interval, tag(log, ...))
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="imgclf_optuna",
    node=ImgclfOptunaSweeperConf,
    provider="imgclf_optuna_sweeper",
)


class ImgclfOptunaSweeper(Sweeper):
    """Asks Optuna for each trial's overrides and runs it with Hydra's launcher, in-process."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from imgclf.sweeps.optimize import optimize

        assert self.config is not None and self.hydra_context is not None
        raw: dict[str, Any] = {
            k: OmegaConf.to_container(v) if isinstance(v, DictConfig) else v
            for k, v in self.settings.items()
        }
        params = {str(k): str(v) for k, v in (raw.pop("params", None) or {}).items()}
        best = raw.pop("best_config", None)
        raw.pop("_target_", None)
        settings = StudySettings(
            **{k: v for k, v in raw.items() if k not in ("sampler", "pruner")},
            sampler=SamplerSettings(**(raw.get("sampler") or {})),
            pruner=PrunerSettings(**(raw.get("pruner") or {})),
        )
        loader = self.hydra_context.config_loader

        def is_group(key: str) -> bool:
            try:
                return bool(loader.get_group_options(key))
            except Exception:  # noqa: BLE001 - not a group name at all
                return False

        def launch(overrides: list[str], job_idx: int) -> Any:
            # The trial number as job index: unique in the study, so processes sharing a
            # sweep dir never write into each other's job folders.
            return self.launcher.launch([tuple(overrides)], initial_job_idx=job_idx)[0]

        outcome = optimize(
            settings,
            params,
            arguments,
            launch=launch,
            experiment_name=str(OmegaConf.select(self.config, "mlflow.experiment_name")),
            max_epochs=OmegaConf.select(self.config, "train.epochs"),
            best_config=Path(best) if best else _default_best_config(self.config),
            is_group=is_group,
        )
        if outcome.restart:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, *sys.argv])
        return outcome


def _default_best_config(config: DictConfig) -> Path | None:
    """``experiment/best.yaml`` in the primary config folder (conf/), if it is a folder."""
    for source in config.hydra.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(str(source.path)) / "experiment" / "best.yaml"
    log.warning("primary config is not a folder: set hydra.sweeper.best_config")
    return None
