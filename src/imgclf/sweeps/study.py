"""The study in its storage: the URL, the sampler and pruner, creating or joining it, counting.

Why each piece is the way it is:

- Storage is always a real RDB URL (default: SQLite ``optuna.db`` beside a local MLflow store):
  every trial's job, in whatever process a launcher runs it, reaches its trial through it, a
  relaunched sweep resumes its study, and several workers (or machines, with PostgreSQL) share
  one. SQLite gets a long busy timeout: several processes write heartbeats and trial states.
- Heartbeats: the worker beats for the trials it launched; a worker killed mid-trial stops
  beating, and once the grace period has passed another worker fails the trial, retries its
  parameters (:mod:`.optimize`) and marks its MLflow run FAILED.
- The sampler is re-seeded per trial with ``seed + trial.number``: a serial sweep is
  reproducible, and parallel workers sharing a study do not propose identical parameters.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from imgclf import tracking
from imgclf.sweeps.settings import PrunerSettings, SamplerSettings, StudySettings, SweepConfigError

log = logging.getLogger(__name__)

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
PARENT_ATTR = "mlflow_parent_run_id"
OBJECTIVE_ATTR = "objective"
ENV_STORAGE = "IMGCLF_SWEEP_STORAGE"
SQLITE_TIMEOUT_S = 120


# --- storage ---------------------------------------------------------------------------------


def storage_url(setting: str | None) -> str:
    """The study's storage: the setting, else ``$IMGCLF_SWEEP_STORAGE``, else beside MLflow.

    Raises:
        SweepConfigError: MLflow is a remote server and no storage was given: each machine
            would silently get a study of its own in its own ``optuna.db``.
    """
    url = setting or os.environ.get(ENV_STORAGE)
    remote = not tracking.tracking_uri().startswith(("sqlite:", "file:", "/"))
    if url:
        if remote and url.startswith("sqlite:"):
            log.warning(
                "study storage %s is local to this host while MLflow (%s) is shared: other "
                "machines will not join this study (set a postgresql:// storage to share it)",
                redact(url),
                tracking.tracking_uri(),
            )
        return url
    if remote:
        raise SweepConfigError(
            f"MLflow tracks to {tracking.tracking_uri()}, a shared server, but the study would "
            f"live in this host's own optuna.db: set hydra.sweeper.storage (or ${ENV_STORAGE}) "
            "to the team's postgresql+psycopg://... URL, or to sqlite:///... to keep it local"
        )
    return default_storage_url()


def default_storage_url() -> str:
    """SQLite ``optuna.db`` beside the MLflow store (the project's ``mlruns/`` otherwise)."""
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///").split("?")[0]).parent
    else:
        folder = tracking.store_dir()
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """The storage URL without a password, for tags and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """An RDB storage (with heartbeats when given); retried while another process creates it."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except Exception as exc:  # noqa: BLE001 - concurrent schema creation: retry, then raise
            last = exc
            log.debug("storage %s not ready (%s); retrying", redact(url), exc)
            time.sleep(0.5 * (attempt + 1))
    assert last is not None
    raise last


# --- sampler and pruner -----------------------------------------------------------------------


class PerTrialSeededSampler(BaseSampler):
    """Delegates to a sampler built afresh for every trial with ``seed + trial.number``.

    One fixed seed per process would make parallel workers propose the same startup trials;
    a random seed would make a serial sweep irreproducible. Trial numbers are unique in a study.
    """

    def __init__(self, factory: Callable[[int], BaseSampler]) -> None:
        self._factory = factory
        self._current = factory(0)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._current = self._factory(trial.number)
        self._current.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its ``study.stop()`` once the grid is done.

    ``stop()`` works only inside ``study.optimize``; the sweeper asks and tells, and caps
    ``n_trials`` at the grid's size instead.
    """

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_sampler(s: SamplerSettings, grid: dict[str, list[Any]] | None = None) -> BaseSampler:
    """Seeded TPE (default) or random search, re-seeded per trial; or a grid over ``grid``."""
    if s.name == "random":
        return PerTrialSeededSampler(lambda n: optuna.samplers.RandomSampler(seed=s.seed + n))
    if s.name == "grid":
        # One seed for every worker: the grid's shuffled order must be the same everywhere,
        # since trial n takes point n of it (later ones an unvisited point at random).
        assert grid is not None, "the grid sampler needs the grid"
        return _GridSampler(grid, seed=s.seed)
    return PerTrialSeededSampler(
        lambda n: optuna.samplers.TPESampler(seed=s.seed + n, n_startup_trials=s.n_startup_trials)
    )


def make_pruner(p: PrunerSettings, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """Median or Hyperband over epochs (one step per epoch), or no pruning."""
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=max_epochs or "auto",
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


# --- the study ------------------------------------------------------------------------------


def open_study(
    s: StudySettings,
    storage: optuna.storages.RDBStorage,
    sampler: BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists; return it and whether we created it.

    Creating first and loading on :class:`DuplicatedStudyError` is atomic in the storage, so of
    several processes started together exactly one is the creator (it opens the parent run).
    """
    kwargs: dict[str, Any] = {
        "study_name": s.study_name,
        "storage": storage,
        "sampler": sampler,
        "pruner": pruner,
    }
    objective = s.objectives()
    try:
        study = optuna.create_study(directions=s.directions(), **kwargs)  # type: ignore[arg-type]
        study.set_user_attr(OBJECTIVE_ATTR, objective[0] if objective and len(objective) == 1
                            else objective)  # fmt: skip
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
    stored = [d.name.lower() for d in study.directions]
    if stored != s.directions():
        raise SweepConfigError(
            f"study {s.study_name!r} in {redact(storage.url)} was created to {stored}; "
            f"hydra.sweeper.direction={s.direction}: use another study_name"
        )
    stored_objective = study.user_attrs.get(OBJECTIVE_ATTR)
    if isinstance(stored_objective, str):
        stored_objective = [stored_objective]
    if stored_objective is not None and objective is not None and stored_objective != objective:
        raise SweepConfigError(
            f"study {s.study_name!r} optimises {stored_objective}, not {objective}: "
            "use another study_name"
        )
    return study, False


def count_trials(study: optuna.Study) -> tuple[int, int, int]:
    """(done, running, failed): COMPLETE + PRUNED are done; RUNNING or WAITING ones in flight."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in DONE_STATES for t in trials)
    running = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    failed = sum(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in trials)
    return done, running, failed


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether ``n_trials`` trials were already done or in flight before trial ``number``.

    Two processes may both see one trial left and both ask; the later-numbered one is surplus.
    """
    ahead = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < number and (t.state in DONE_STATES or t.state == TrialState.RUNNING)
    ]
    return len(ahead) >= n_trials


def rss_mb() -> float:
    """Resident memory of this process in MiB (current, not peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # pragma: no cover - non-Linux: peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
