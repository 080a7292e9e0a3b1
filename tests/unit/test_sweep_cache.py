"""Sweeps train on preprocess's shards: a job asking for other inputs must fail loudly."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.artifacts import PreprocessOutputs
from imgclf.config import ConfigError
from imgclf.fileio import write_json
from imgclf.sweeps.job import load_rows
from tests.conftest import tiny_config


@pytest.fixture
def cache(tmp_path):
    x = np.zeros((3, 32, 48, 3), np.uint8)
    y = np.arange(3)
    PreprocessOutputs(tmp_path).write_arrays(
        {s: (x, y) for s in ("train", "val", "test")}, list("abc")
    )
    write_json(tmp_path / "classes.json", ["a", "b", "c"])
    PreprocessOutputs(tmp_path).write_input_spec(
        {"image_height": 32, "image_width": 48, "fit": "crop_tall"}
    )
    return tmp_path


def test_matching_job_loads_without_the_test_split(cache):
    data, classes = load_rows(tiny_config(data={"fit": "crop_tall"}), cache)
    assert classes == ["a", "b", "c"] and sorted(data) == ["train", "val"]
    assert data["train"].n == 3


def test_other_fit_or_size_names_the_key(cache):
    with pytest.raises(
        ConfigError, match=r"data\.fit=crop_tall but this job asks for data\.fit=stretch"
    ):
        load_rows(tiny_config(data={"fit": "stretch"}), cache)
    with pytest.raises(ConfigError, match=r"data\.image_height=64"):
        load_rows(tiny_config(data={"image_height": 64, "fit": "crop_tall"}), cache)


def test_cache_from_before_input_json_counts_as_stretch(cache):
    PreprocessOutputs(cache).input_spec.unlink()
    assert load_rows(tiny_config(data={"fit": "stretch"}), cache)[1] == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"data\.fit=stretch"):
        load_rows(tiny_config(data={"fit": "crop_tall"}), cache)
