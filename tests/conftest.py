"""Shared fixtures: a tiny synthetic dataset and an isolated MLflow store.

The fast suite never needs the real data, the network or a GPU.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf.compose import compose_dict
from imgclf.config import Config
from imgclf.params import config_from_dict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSES = ("alpha", "beta", "gamma")


def draw_class_image(cls: int, rng: np.random.Generator, height: int = 40, width: int = 60):
    """A visibly different pattern per class: horizontal stripes, vertical stripes, a disc."""
    img = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    shift = int(rng.integers(0, 4))
    if cls == 0:
        mask = ((yy + shift) // 4) % 2 == 0
        color = (230, 60, 60)
    elif cls == 1:
        mask = ((xx + shift) // 4) % 2 == 0
        color = (60, 230, 60)
    else:
        cy, cx = height / 2 + shift, width / 2 - shift
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(height, width) / 3) ** 2
        color = (60, 60, 230)
    img[mask] = color
    return img


def write_dataset(root: Path, n_train: int = 16, n_test: int = 6, seed: int = 0) -> Path:
    """Write ``root/{Training_data,Testing_Data}/{alpha,beta,gamma}/*.png``."""
    rng = np.random.default_rng(seed)
    for split, n in (("Training_data", n_train), ("Testing_Data", n_test)):
        for k, cls in enumerate(TINY_CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(draw_class_image(k, rng)).save(folder / f"{cls}_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class dataset of small PNGs (16 train + 6 test per class), seeded."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "id-tiny")


# The tests' small override on top of conf/: a config that trains in seconds on the tiny dataset.
# Every other value (augmentation, schedule, export formats, promotion floors...) is conf/'s own,
# so a default changed there reaches the tests too.
TINY_OVERRIDE: dict[str, dict[str, Any]] = {
    "data": {
        "image_height": 32,
        "image_width": 48,
        "val_fraction": 0.25,
        "min_side": 8,
        "workers": 1,
        "cache_dir": "",  # no decode cache in the working folder; test_decode_cache sets one
    },
    # Widths 8, 16: pinned, so the tests' 4-epoch fits do not follow the default's width
    "model": {"blocks": 2, "filters": 8, "filter_growth": 2.0, "dense_units": 16, "dropout": 0.1},
    "optimizer": {"name": "adam", "learning_rate": 0.003},
    "train": {"epochs": 4, "batch_size": 8, "patience": 10, "threads": 2, "refit": False},
    "mlflow": {"experiment_name": "tiny", "registered_model_name": "tiny-model"},
}


@functools.cache
def composed_conf() -> dict[str, Any]:
    """conf/ composed once per session (Hydra takes a few tenths of a second per composition)."""
    return compose_dict(REPO_ROOT / "conf")


def tiny_config(**sections: dict) -> Config:
    """conf/ + :data:`TINY_OVERRIDE` + ``sections`` (e.g. ``train={"epochs": 2}``), validated."""
    raw = copy.deepcopy(composed_conf())
    for overrides in (TINY_OVERRIDE, sections):
        for name, values in overrides.items():
            raw.setdefault(name, {}).update(values)
    return config_from_dict(raw, source="tests: conf/ + tiny override")


def write_params(path: Path, cfg: Config) -> Path:
    """Write ``cfg`` as a whole params file (what `make params` writes), for the CLI's --params."""
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg)), encoding="utf-8")
    return path


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An isolated SQLite MLflow store for one test."""
    store = tmp_path / "mlruns"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


# Tests are grouped by cost, by folder: unit/ (pure, fast), integration/ (the shared tiny
# pipeline, real stores and processes) and data/ (the real dataset). `-m unit`, `-m integration`
# and `-m slow` select a group. A test marked with a group itself keeps it (a unit module's one
# test that runs a real converter is `integration`; a fresh clone anywhere is `slow`).
GROUPS = {"unit": "unit", "integration": "integration", "data": "slow"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = GROUPS.get(item.path.parent.name)
        if group is not None and not any(item.get_closest_marker(g) for g in GROUPS.values()):
            item.add_marker(group)
