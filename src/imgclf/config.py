"""Typed schemas for every config section, and the loader that validates a config against them.

The schemas hold types and ranges only; the values live in ``conf/`` (Hydra), and nowhere else.
``params.yaml`` is conf/'s composed snapshot: stages read it through :func:`load_config`, while
``imgclf-train``, scripts and tests compose ``conf/`` plus overrides (:mod:`imgclf.compose`).
Either way the result fails before any work on an unknown, missing, mistyped or out-of-range key,
naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from imgclf.errors import ImgclfError

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
MODEL_NAMES = ("cnn", "seed_cnn", "resnet")
BLOCK_TYPES = ("plain", "residual")
SCHEDULES = ("constant", "cosine")
FITS = ("stretch", "crop_tall", "crop")  # data.fit, see imgclf.images.fit_aspect


class ConfigError(ImgclfError, ValueError):
    """A config file or key is invalid; the message names it and says what to do."""


# The schemas hold types only: every value comes from conf/ (through params.yaml or a Hydra
# composition). A field has no default, so OmegaConf reads it as MISSING ("???") and a key that
# conf/ does not set fails validation naming it, and constructing a section in Python without
# every value is a TypeError instead of a silent second copy of conf/.


@dataclass
class DataConfig:
    train_dir: str
    test_dir: str
    image_height: int
    image_width: int
    fit: str
    val_fraction: float
    split_seed: int
    min_side: int
    max_pixels: int
    max_rejected_fraction: float
    near_dup_distance: int
    workers: int


@dataclass
class ModelConfig:
    name: str
    blocks: int
    filters: int
    filter_growth: float  # filters multiply by this from block to block
    kernel_size: int
    dense_units: int
    dropout: float
    batch_norm: bool
    global_pool: bool
    block: str


@dataclass
class OptimizerConfig:
    name: str
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: str


@dataclass
class AugmentConfig:
    enabled: bool
    rotation: float
    zoom: float
    translation: float
    contrast: float
    brightness: float
    perspective: float
    perspective_scale: float


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    patience: int
    monitor: str
    seed: int
    label_smoothing: float
    threads: int
    refit: bool  # train stage: fit train + val for all epochs
    deterministic: bool  # TensorFlow's op determinism (BENCHMARKS.md: cost and effect)


@dataclass
class MlflowConfig:
    experiment_name: str
    registered_model_name: str


@dataclass
class EvaluateConfig:
    batch_size: int
    normalize_confusion: bool


FORMAT_NAMES = ("h5", "keras", "saved_model", "tflite", "onnx")
PROMOTE_METRICS = ("accuracy", "leakfree_accuracy", "macro_f1", "leakfree_macro_f1")


@dataclass
class ExportConfig:
    challenger_alias: str
    champion_alias: str
    formats: list[str]
    parity_samples: int
    parity_max_abs_diff: float


@dataclass
class PromoteConfig:
    min_accuracy: float
    min_leakfree_accuracy: float
    metric: str
    min_margin: float
    format: str
    batch_size: int


CV_POOLS = ("train", "all")


@dataclass
class CVConfig:
    folds: int  # imgclf-train: 0 scores on the validation split; k >= 2: grouped k-fold CV
    pool: str  # train: Training_data only; all: Testing_Data too (measurement, never sweeps)
    seed: int  # which groups land in which fold


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    augment: AugmentConfig
    train: TrainConfig
    mlflow: MlflowConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    promote: PromoteConfig
    cv: CVConfig


def _check_ranges(cfg: Config) -> None:
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
        _check_ranges(cfg)
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


def flatten(cfg: Config, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Flatten config sections into ``{"section.key": value}`` for tracking."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    out: dict[str, Any] = {}
    for section, values in container.items():
        if sections is not None and section not in sections:
            continue
        for key, value in values.items():
            out[f"{section!s}.{key!s}"] = value
    return out
