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
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgclf.sweeps.settings import PrunerSettings, SamplerSettings, StudySettings

log = logging.getLogger(__name__)


@dataclass
class ImgclfOptunaSweeperConf(StudySettings):
    """StudySettings (study, storage, objective(s), direction(s), sampler, pruner...) + these."""

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
    """Asks Optuna for each trial's overrides and runs them with Hydra's configured launcher."""

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
        from imgclf.errors import ImgclfError
        from imgclf.sweeps.optimize import Launch, StudyIncompleteError, optimize

        assert self.config is not None and self.hydra_context is not None
        raw: dict[str, Any] = {
            k: OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v
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

        def run(jobs: list[list[str]], first: int) -> Any:
            return self.launcher.launch([tuple(j) for j in jobs], initial_job_idx=first)

        sweep_dir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)
        subdir = sweep_dir.get("subdir") if isinstance(sweep_dir, dict) else None
        launch = Launch(
            run=run,
            batch_size=settings.n_jobs or _launcher_jobs(self.config),
            subdir_per_trial=subdir == "${hydra.job.num}",
        )
        experiment = settings.experiment_name or OmegaConf.select(
            self.config, "mlflow.experiment_name", default=None
        )
        try:
            return optimize(
                settings,
                params,
                arguments,
                launch=launch,
                experiment_name=str(experiment) if experiment else None,
                max_epochs=OmegaConf.select(self.config, "train.epochs", default=None),
                best_config=Path(best) if best else _default_best_config(self.config),
                is_group=is_group,
            )
        except (ImgclfError, StudyIncompleteError) as exc:
            # One line, not Hydra's traceback; a non-zero exit tells a worker's script.
            sys.stdout.flush()
            sys.stderr.write(f"imgclf_optuna: {exc}\n")
            sys.exit(1)


def _launcher_jobs(config: DictConfig) -> int:
    """How many jobs the configured launcher runs at once (joblib's n_jobs; else one)."""
    n = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    if n is None:
        return 1
    n = int(n)
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)  # joblib: -1 = all CPUs


def _default_best_config(config: DictConfig) -> Path | None:
    """``experiment/best.yaml`` in the primary config folder (conf/), if it is a folder."""
    for source in config.hydra.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(str(source.path)) / "experiment" / "best.yaml"
    log.warning("primary config is not a folder: set hydra.sweeper.best_config")
    return None
