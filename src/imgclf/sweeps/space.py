"""The search space: Hydra's override grammar as Optuna distributions, and back as overrides.

``choice(...)``, ``range(start, stop, step)``, ``interval(low, high)`` and
``tag(log, interval(...))`` in ``hydra.sweeper.params`` or on the command line, as in Hydra's
own Optuna sweeper; plain ``key=value`` overrides are fixed for every trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from imgclf.sweeps.settings import SweepConfigError


def parse_search_space(
    params: Mapping[str, str], arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Turn the sweep overrides into Optuna distributions.

    ``params`` is the search-space file (``hydra.sweeper.params``); command-line ``arguments``
    add to or replace its entries.

    Returns:
        The distributions by override key, and the fixed overrides.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in params.items()]
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


def grid_values(space: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every point of each parameter, for the grid sampler (choice and range only)."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = round((dist.high - dist.low) / dist.step)
            grid[key] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            raise SweepConfigError(
                f"{key}: the grid sampler needs choice() or range(), not an interval"
            )
    return grid


def suggest(trial: Any, space: Mapping[str, BaseDistribution]) -> list[str]:
    """Ask the trial for every parameter; return them as Hydra overrides.

    The overrides are made from the values the trial records, so what a job trains is exactly
    what Optuna holds, a retried trial's stored parameters included.
    """
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
    if isinstance(value, str):
        return quote(value) if _needs_quotes(value) else value
    return str(value)


def _needs_quotes(text: str) -> bool:
    return not text or any(c in text for c in " ,()[]{}'\"=\\:$") or text in ("null", "true")


def quote(text: str) -> str:
    """``text`` as a single-quoted value of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def describe(dist: BaseDistribution) -> str:
    """A distribution in Hydra's grammar again (for the parent run's params)."""
    if isinstance(dist, CategoricalDistribution):
        return f"choice({', '.join(format_value(c) for c in dist.choices)})"
    assert isinstance(dist, IntDistribution | FloatDistribution)
    if dist.step is not None and not dist.log:
        text = f"range({dist.low}, {dist.high + dist.step}, {dist.step})"
    else:
        text = f"interval({dist.low}, {dist.high})"
    return f"tag(log, {text})" if dist.log else text
