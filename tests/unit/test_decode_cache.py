"""Preprocess's decode cache: by content and spec, never stale, and a grown dataset decodes only
its new files while writing the same shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclf import images
from imgclf.data.cache import DecodeCache
from imgclf.stages import ingest, preprocess
from tests.conftest import tiny_config, write_dataset

SPEC = {"image_height": 32, "image_width": 48, "fit": "crop_tall"}


def test_no_folder_no_cache_and_every_ingredient_changes_the_key(tmp_path):
    assert DecodeCache.at("", SPEC, b"code") is None
    base = DecodeCache.at(tmp_path, SPEC, b"code")
    assert base is not None and base.folder.parent == tmp_path.resolve() / "decode"
    assert DecodeCache.at(tmp_path, {**SPEC, "fit": "stretch"}, b"code") != base
    assert DecodeCache.at(tmp_path, SPEC, b"other decoder") != base
    assert DecodeCache.at(tmp_path, dict(reversed(SPEC.items())), b"code") == base


def test_a_hit_is_the_decoded_tensor_and_skips_the_decode(tmp_path, monkeypatch):
    path = write_dataset(tmp_path / "d", n_train=1, n_test=1) / "Training_data/alpha/alpha_00.png"
    cache = DecodeCache.at(tmp_path / "cache", SPEC, b"code")
    first = images.load_resized(path, 32, 48, "crop_tall", cache=cache)
    assert np.array_equal(first, images.load_resized(path, 32, 48, "crop_tall"))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(images, "decode_resized", no_decode)
    again = images.load_resized(path, 32, 48, "crop_tall", cache=cache)
    assert again.dtype == np.uint8 and np.array_equal(again, first)
    # A half-written entry (a kill mid-write leaves only a .tmp; this one is corrupt) is a miss.
    [entry] = list(cache.folder.rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:20])
    with pytest.raises(AssertionError, match="decoded although cached"):
        images.load_resized(path, 32, 48, "crop_tall", cache=cache)


DECODES: list[int] = []  # preprocess's decodes (ingest's sample grid decodes too: not counted)


def _preprocess(cfg, data: Path, out: Path) -> dict[str, bytes]:
    ingest.run(cfg, in_dir=data, out_dir=out / "ingest", track=False)
    DECODES.clear()
    preprocess.run(cfg, data_dir=data, ingest_dir=out / "ingest", out_dir=out / "pre")
    return {p.name: p.read_bytes() for p in sorted((out / "pre").rglob("*.npy"))}


def test_a_grown_dataset_decodes_only_its_new_files_into_the_same_shards(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", n_train=8, n_test=3)
    real = images.decode_resized

    def counted(*args, **kwargs):
        DECODES.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "decode_resized", counted)
    cached = tiny_config(data={"cache_dir": str(tmp_path / "cache")})
    uncached = _preprocess(tiny_config(), data, tmp_path / "plain")
    assert len(DECODES) == 33  # 3 classes x (8 + 3)
    assert _preprocess(cached, data, tmp_path / "first") == uncached
    assert len(DECODES) == 33  # filling the cache
    assert _preprocess(cached, data, tmp_path / "again") == uncached
    assert DECODES == []
    # One more training file: one decode, and the same shards as decoding everything.
    (data / "Training_data/beta/beta_00.png").rename(data / "Training_data/beta/beta_zz.png")
    write_dataset(tmp_path / "more", n_train=9, n_test=3, seed=5)
    new = tmp_path / "more/Training_data/beta/beta_08.png"
    new.rename(data / "Training_data/beta/beta_08.png")
    grown_cached = _preprocess(cached, data, tmp_path / "grown")
    assert len(DECODES) == 1  # the renamed file is a hit: keyed by content, not path
    assert grown_cached == _preprocess(tiny_config(), data, tmp_path / "grown-plain")
