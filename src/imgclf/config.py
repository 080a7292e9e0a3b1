"""Typed schemas for every config section: the keys, their types and the allowed names.

The values live in ``conf/`` (Hydra), and nowhere else. :mod:`imgclf.params` validates a config
against these schemas (``params.yaml``, or a composition of ``conf/`` plus overrides by
:mod:`imgclf.compose`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from imgclf.errors import ImgclfError

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
MODEL_NAMES = ("cnn", "seed_cnn", "resnet")
BLOCK_TYPES = ("plain", "residual")
SCHEDULES = ("constant", "cosine")
FITS = ("stretch", "crop_tall", "crop")  # data.fit, see imgclf.images.fit_aspect
ENGINES = ("local", "dask")  # data.engine: where ingest and preprocess decode


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
    max_group_fraction: float  # largest near-duplicate group, as a fraction of the files
    workers: int
    engine: str  # where ingest and preprocess decode: local | dask (imgclf.parallel)
    dask_scheduler: str  # data.engine=dask: the scheduler's address; "" = a LocalCluster here
    cache_dir: str  # preprocess's decoded-image cache by file content (imgclf.data.cache); ""=off


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
    repeats: int  # the folds trained this many times, train.seed + 0, 1, ...: the seed's spread


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
