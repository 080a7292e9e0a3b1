"""Optuna for the ``imgclf_optuna`` Hydra sweeper: storage, sampler, pruner, search space.

Kept apart from the plugin (``hydra_plugins.imgclf_optuna_sweeper``) so the plugin module that
Hydra imports at every start stays light, and from :mod:`imgclf.sweep` (the job side), which
only needs :class:`PruningCallback` while a trial runs.

Why each piece is the way it is:

- Storage is a real RDB URL (default: SQLite ``optuna.db`` beside the MLflow store), so a
  relaunched sweep resumes its study and several processes (or machines, with PostgreSQL) can
  share one. SQLite gets a long busy timeout: four processes writing heartbeats and trial
  states otherwise hit "database is locked".
- Heartbeats: a sweep killed mid-trial leaves its trial RUNNING; once its heartbeat is older
  than the grace period, the next process to start a trial fails it (never counted as done),
  retries its parameters, and marks its MLflow run FAILED.
- The sampler is re-seeded per trial with ``seed + trial.number``: a serial sweep is
  reproducible, and parallel processes sharing a study do not propose identical parameters.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from imgclf import tracking
from imgclf.sweeps.settings import (  # noqa: F401 - re-exported for the sweeper and tests
    OBJECTIVES,
    PrunerSettings,
    SamplerSettings,
    StudySettings,
    SweepConfigError,
)

log = logging.getLogger(__name__)

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
PARENT_ATTR = "mlflow_parent_run_id"
SQLITE_TIMEOUT_S = 120


# --- storage ---------------------------------------------------------------------------------


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
    heartbeat_interval: int,
    grace_period: int,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; retried while another process creates the tables."""
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


def make_sampler(s: SamplerSettings) -> BaseSampler:
    """Seeded TPE (default) or random search, re-seeded per trial."""
    if s.name == "random":
        return PerTrialSeededSampler(lambda n: optuna.samplers.RandomSampler(seed=s.seed + n))
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


# --- search space (Hydra's override grammar) -------------------------------------------------


def parse_search_space(
    params: Mapping[str, str], arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Turn ``choice``/``range``/``interval``/``tag(log, interval)`` into Optuna distributions.

    ``params`` is the search-space file (``hydra.sweeper.params``); command-line ``arguments``
    add to or replace its entries. Plain ``key=value`` overrides are fixed for every trial.

    Returns:
        The distributions by override key, and the fixed overrides.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    merged = {**{str(k): str(v) for k, v in params.items()}}
    lines = [f"{k}={v}" for k, v in merged.items()]
    parsed = OverridesParser.create().parse_overrides([*lines, *arguments])
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for ov in parsed:
        key = ov.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if ov.is_sweep_override():
            space[key] = to_distribution(ov)
        else:
            fixed[key] = f"{key}={ov.get_value_element_as_str()}"
    return space, list(fixed.values())


def to_distribution(ov: Any) -> BaseDistribution:
    """One sweep override as an Optuna distribution (names the key when unsupported)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    key = ov.get_key_element()
    value = ov.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        if value.shuffle:
            raise SweepConfigError(f"{key}: shuffle() means nothing to Optuna; drop it")
        return CategoricalDistribution([_plain(c) for c in value.list])
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        assert start is not None and stop is not None
        n = math.ceil((stop - start) / step)
        if n < 1:
            raise SweepConfigError(f"{key}: empty range")
        last = start + (n - 1) * step
        if all(float(x).is_integer() for x in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step), log=log_scale)
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        assert lo is not None and hi is not None
        if isinstance(lo, int) and isinstance(hi, int) and "float" not in value.tags:
            return IntDistribution(lo, hi, log=log_scale)
        return FloatDistribution(float(lo), float(hi), log=log_scale)
    raise SweepConfigError(f"{key}: {ov.get_value_element_as_str()} is not choice/range/interval")


def _plain(value: Any) -> Any:
    """Choice values must be None/bool/int/float/str for Optuna's storage."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise SweepConfigError(f"choice value {value!r}: only scalars can be searched")


def suggest(trial: optuna.Trial, space: Mapping[str, BaseDistribution]) -> list[str]:
    """Ask the trial for every parameter; return them as Hydra overrides."""
    overrides = []
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            value = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            value = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, FloatDistribution):
            value = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:  # pragma: no cover - parse_search_space makes only the three above
            raise SweepConfigError(f"{key}: unsupported distribution {dist}")
        overrides.append(f"{key}={format_value(value)}")
    return overrides


def format_value(value: Any) -> str:
    """A value in Hydra's override grammar (floats keep full precision, null for None)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --- pruning ----------------------------------------------------------------------------------


def pruning_callback(trial: optuna.Trial, monitor: str) -> Any:
    """A Keras callback reporting ``monitor`` each epoch to ``trial`` and stopping when pruned.

    It stops training rather than raising inside ``fit``, so Keras finishes the epoch cleanly
    (the MLflow callback has logged it); the job raises :class:`optuna.TrialPruned` after.
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


# --- the study ------------------------------------------------------------------------------


def open_study(
    s: StudySettings, storage: optuna.storages.RDBStorage, max_epochs: int | None
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists; return it and whether we created it.

    Creating first and loading on :class:`DuplicatedStudyError` is atomic in the storage, so of
    several processes started together exactly one is the creator (it opens the parent run).
    """
    kwargs: dict[str, Any] = {
        "study_name": s.study_name,
        "storage": storage,
        "sampler": make_sampler(s.sampler),
        "pruner": make_pruner(s.pruner, max_epochs),
    }
    try:
        study = optuna.create_study(direction=s.direction, **kwargs)  # type: ignore[arg-type]
        study.set_user_attr("objective", s.objective)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
    stored = study.direction.name.lower()
    if stored != s.direction:
        raise SweepConfigError(
            f"study {s.study_name!r} in {redact(storage.url)} was created to {stored}; "
            f"hydra.sweeper.direction={s.direction}: use another study_name"
        )
    objective = study.user_attrs.get("objective")
    if objective not in (None, s.objective):
        raise SweepConfigError(
            f"study {s.study_name!r} optimises {objective}, not {s.objective}: "
            "use another study_name"
        )
    return study, False


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(done, running): COMPLETE + PRUNED count as done; RUNNING ones are in flight."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in DONE_STATES for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return done, running


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
