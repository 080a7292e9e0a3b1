"""Validating a config against the schemas of :mod:`imgclf.config`, and loading ``params.yaml``.

``params.yaml`` is conf/'s composed snapshot: stages read it through :func:`load_config`, while
``imgclf-train``, scripts and tests compose ``conf/`` plus overrides (:mod:`imgclf.compose`) and
validate the result with :func:`config_from_dict`. Either way a config fails before any work on
an unknown, missing, mistyped or out-of-range key, in one line naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from imgclf.config import (
    BLOCK_TYPES,
    CV_POOLS,
    ENGINES,
    FITS,
    FORMAT_NAMES,
    MODEL_NAMES,
    OPTIMIZER_NAMES,
    PROMOTE_METRICS,
    SCHEDULES,
    Config,
    ConfigError,
)


def check_ranges(cfg: Config) -> None:
    """Semantic checks that types alone cannot express."""
    checks: list[tuple[bool, str, str]] = [
        (cfg.data.image_height >= 8, "data.image_height", "must be >= 8"),
        (cfg.data.image_width >= 8, "data.image_width", "must be >= 8"),
        (cfg.data.fit in FITS, "data.fit", f"must be one of {FITS}"),
        (0.0 < cfg.data.val_fraction < 1.0, "data.val_fraction", "must be in (0, 1)"),
        (
            0.0 <= cfg.data.max_rejected_fraction <= 1.0,
            "data.max_rejected_fraction",
            "must be in [0, 1]",
        ),
        (0 <= cfg.data.near_dup_distance <= 64, "data.near_dup_distance", "must be in [0, 64]"),
        (cfg.data.engine in ENGINES, "data.engine", f"must be one of {ENGINES}"),
        (
            0.0 < cfg.data.max_group_fraction <= 1.0,
            "data.max_group_fraction",
            "must be in (0, 1]",
        ),
        (cfg.model.name in MODEL_NAMES, "model.name", f"must be one of {MODEL_NAMES}"),
        (cfg.model.blocks >= 1, "model.blocks", "must be >= 1"),
        (cfg.model.block in BLOCK_TYPES, "model.block", f"must be one of {BLOCK_TYPES}"),
        (cfg.model.filters >= 1, "model.filters", "must be >= 1"),
        (cfg.model.filter_growth >= 1.0, "model.filter_growth", "must be >= 1"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout", "must be in [0, 1)"),
        (0.0 <= cfg.augment.perspective <= 1.0, "augment.perspective", "must be in [0, 1]"),
        (
            0.0 <= cfg.augment.perspective_scale <= 1.0,
            "augment.perspective_scale",
            "must be in [0, 1]",
        ),
        (
            cfg.optimizer.name in OPTIMIZER_NAMES,
            "optimizer.name",
            f"must be one of {OPTIMIZER_NAMES}",
        ),
        (cfg.optimizer.learning_rate > 0, "optimizer.learning_rate", "must be > 0"),
        (cfg.optimizer.schedule in SCHEDULES, "optimizer.schedule", f"must be one of {SCHEDULES}"),
        (cfg.train.epochs >= 1, "train.epochs", "must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (
            cfg.train.monitor in ("val_loss", "val_accuracy"),
            "train.monitor",
            "must be val_loss or val_accuracy",
        ),
        (0.0 <= cfg.train.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)"),
        (
            set(cfg.export.formats) <= set(FORMAT_NAMES)
            and {"h5", "keras"} <= set(cfg.export.formats),
            "export.formats",
            f"must be a subset of {FORMAT_NAMES} that includes h5 and keras",
        ),
        (cfg.export.parity_samples >= 1, "export.parity_samples", "must be >= 1"),
        (cfg.export.parity_max_abs_diff > 0, "export.parity_max_abs_diff", "must be > 0"),
        (0.0 <= cfg.promote.min_accuracy <= 1.0, "promote.min_accuracy", "must be in [0, 1]"),
        (
            0.0 <= cfg.promote.min_leakfree_accuracy <= 1.0,
            "promote.min_leakfree_accuracy",
            "must be in [0, 1]",
        ),
        (
            cfg.promote.metric in PROMOTE_METRICS,
            "promote.metric",
            f"must be one of {PROMOTE_METRICS}",
        ),
        (-1.0 <= cfg.promote.min_margin <= 1.0, "promote.min_margin", "must be in [-1, 1]"),
        (cfg.promote.format in FORMAT_NAMES, "promote.format", f"must be one of {FORMAT_NAMES}"),
        (cfg.cv.folds == 0 or cfg.cv.folds >= 2, "cv.folds", "must be 0 (off) or >= 2"),
        (cfg.cv.pool in CV_POOLS, "cv.pool", f"must be one of {CV_POOLS}"),
        (cfg.cv.repeats >= 1, "cv.repeats", "must be >= 1"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"invalid value for '{key}': {why}")


FIX_IN_CONF = "fix it in conf/ and run `make params`"
FIX_IN_EXP_RUN = (
    "fix the `dvc exp run -S` override (or conf/); `git restore params.yaml artifacts && "
    "dvc checkout` undoes the failed run (docs/pipeline.md)"
)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", fix: str = FIX_IN_CONF) -> Config:
    """Validate a plain mapping (a whole composed config) against the :class:`Config` schema.

    Args:
        source: where ``raw`` came from, to start the message with (a file, a composition).
        fix: what to do, to end the message with.

    Raises:
        ConfigError: one line naming the source and the key: unknown (with the closest schema
            key), missing, of the wrong type or out of range.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe(exc)}; {fix}") from exc
    assert isinstance(cfg, Config)
    try:
        check_ranges(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}; {fix}") from exc
    return cfg


def _describe(exc: OmegaConfBaseException) -> str:
    """OmegaConf's failure as a phrase naming the dotted key (its own text spans lines)."""
    key = str(getattr(exc, "full_key", None) or "?")
    if isinstance(exc, MissingMandatoryValue):
        return f"no value for '{key}'"
    if isinstance(exc, ConfigKeyError):
        close = difflib.get_close_matches(key, schema_keys(key), n=1)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    return f"bad value for '{key}': {str(exc).splitlines()[0]}"


def schema_keys(key: str) -> list[str]:
    """The dotted keys the schema allows where ``key`` stands (its siblings), for suggestions."""
    parent = key.rpartition(".")[0]
    cls: Any = Config
    for part in parent.split(".") if parent else []:
        cls = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            return []
    prefix = f"{parent}." if parent else ""
    return [prefix + f.name for f in dataclasses.fields(cls)]


def load_config(path: str | Path = "params.yaml") -> Config:
    """Load and validate the composed params file (normally ``params.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: params file not found; run from the project root (`make params` writes it)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    # Under `dvc exp run` a bad value usually came from its -S override, not from conf/.
    fix = FIX_IN_EXP_RUN if os.environ.get("DVC_EXP_NAME") else FIX_IN_CONF
    return config_from_dict(raw, source=str(path), fix=fix)
