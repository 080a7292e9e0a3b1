"""Typed schemas for every config section, and the loader that validates params.yaml against them.

`conf/` (Hydra) is edited by hand; `params.yaml` is its composed snapshot. Stages read only
`params.yaml`, through :func:`load_config`, which fails before any work on an unknown key, a wrong
type or an out-of-range value, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
MODEL_NAMES = ("cnn", "seed_cnn", "resnet")
BLOCK_TYPES = ("plain", "residual")
SCHEDULES = ("constant", "cosine")
FITS = ("stretch", "crop_tall", "crop")  # data.fit, see imgclf.images.fit_aspect


class ConfigError(ValueError):
    """A config file or key is invalid; the message names it and says what to do."""


@dataclass
class DataConfig:
    train_dir: str = "Training_data"
    test_dir: str = "Testing_Data"
    image_height: int = 64
    image_width: int = 96
    fit: str = "crop_tall"
    val_fraction: float = 0.2
    split_seed: int = 42
    min_side: int = 16
    max_pixels: int = 60_000_000
    max_rejected_fraction: float = 0.05
    near_dup_distance: int = 3
    workers: int = 0


@dataclass
class ModelConfig:
    name: str = "resnet"
    blocks: int = 4
    filters: int = 32
    filter_growth: float = 1.5  # filters multiply by this from block to block
    kernel_size: int = 3
    dense_units: int = 128
    dropout: float = 0.3
    batch_norm: bool = True
    global_pool: bool = True
    block: str = "residual"


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 2e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "cosine"


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotation: float = 0.02
    zoom: float = 0.1
    translation: float = 0.05
    contrast: float = 0.1
    brightness: float = 0.1
    perspective: float = 0.0
    perspective_scale: float = 1.0


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    patience: int = 10
    monitor: str = "val_loss"
    seed: int = 42
    label_smoothing: float = 0.1
    threads: int = 0
    refit: bool = True  # train stage: fit train + val for all epochs (conf/train/default.yaml)


@dataclass
class MlflowConfig:
    experiment_name: str = "idcards"
    registered_model_name: str = "idcards"


@dataclass
class EvaluateConfig:
    batch_size: int = 64
    normalize_confusion: bool = False


FORMAT_NAMES = ("h5", "keras", "saved_model", "tflite", "onnx")
PROMOTE_METRICS = ("accuracy", "leakfree_accuracy", "macro_f1", "leakfree_macro_f1")


@dataclass
class ExportConfig:
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    formats: list[str] = field(default_factory=lambda: list(FORMAT_NAMES))
    parity_samples: int = 32
    parity_max_abs_diff: float = 1e-4


@dataclass
class PromoteConfig:
    min_accuracy: float = 0.8
    min_leakfree_accuracy: float = 0.7
    metric: str = "leakfree_accuracy"
    min_margin: float = 0.0
    format: str = "h5"
    batch_size: int = 64


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)


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
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"invalid value for '{key}': {why}")


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain mapping against the :class:`Config` schema.

    Raises:
        ConfigError: naming the source and the offending key.
    """
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, raw)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0]
        raise ConfigError(
            f"{source}: bad config key '{key}': {msg}. Fix it in conf/ (or params.yaml) "
            "and run again."
        ) from exc
    assert isinstance(cfg, Config)
    try:
        _check_ranges(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return cfg


def load_config(path: str | Path = "params.yaml") -> Config:
    """Load and validate the composed params file (normally ``params.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return config_from_dict(raw, source=str(path))


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
