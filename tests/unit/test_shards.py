"""The shard folder: writer, manifest checks, the one reader, and training batches equal to the
in-memory pipeline's."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from imgclf.artifacts import PreprocessOutputs, ShardError, ShardWriter
from imgclf.artifacts.shards import MANIFEST, ShardReader, rows_per_shard
from imgclf.errors import MissingInputError

SHAPE = (4, 6, 3)


def _subsets(n_train: int = 23, n_val: int = 7, n_test: int = 5) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for s, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        x = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
        out[s] = (x, rng.integers(0, 3, n).astype(np.int64))
    return out


def _write(root, subsets, shard_rows=4, chunk=3):
    counts = {s: len(y) for s, (x, y) in subsets.items()}
    with ShardWriter(
        root / "shards",
        image_shape=SHAPE,
        counts=counts,
        classes=["a", "b", "c"],
        params={"image_height": 4, "image_width": 6, "fit": "stretch"},
        shard_rows=shard_rows,
    ) as w:
        for s, (x, y) in subsets.items():
            for i in range(0, len(y), chunk):  # chunks that straddle shard boundaries
                w.append(s, x[i : i + chunk], y[i : i + chunk])
    return PreprocessOutputs(root)


def test_rows_per_shard_is_about_100_mb():
    assert rows_per_shard((64, 96, 3)) == 100 * 2**20 // (64 * 96 * 3) == 5688
    assert rows_per_shard((224, 224, 3)) == 696


def test_written_rows_read_back_in_any_order(tmp_path):
    subsets = _subsets()
    pre = _write(tmp_path, subsets)
    reader = pre.reader()
    manifest = json.loads(pre.manifest.read_text())
    assert manifest["subsets"]["train"]["count"] == 23
    assert [s["rows"] for s in manifest["subsets"]["train"]["files"]] == [4, 4, 4, 4, 4, 3]
    assert manifest["image_shape"] == list(SHAPE) and manifest["params"]["fit"] == "stretch"
    reader.verify()  # every sha256 matches
    for s, (x, y) in subsets.items():
        rows = reader.subset(s)
        assert rows.n == len(y) and np.array_equal(rows.labels, y)
        idx = np.random.default_rng(1).permutation(len(y))
        assert np.array_equal(rows.rows(idx), x[idx])
        assert np.array_equal(np.concatenate(list(rows.batches(5))), x)
        assert np.array_equal(rows[2], x[2]) and np.array_equal(rows[1:4], x[1:4])
    pool = reader.pool(["train", "val"])
    both = np.concatenate([subsets["train"][0], subsets["val"][0]])
    assert np.array_equal(pool.take([29, 0, 23]).rows([0, 1, 2]), both[[29, 0, 23]])
    # Each shard is a plain .npy file.
    first = np.load(tmp_path / "shards" / "train-00000.npy")
    assert np.array_equal(first, subsets["train"][0][:4])


def test_a_broken_folder_names_the_file_and_the_fix(tmp_path):
    pre = _write(tmp_path, _subsets())
    shard = pre.shards / "val-00001.npy"
    with shard.open("ab") as f:
        f.write(b"x")
    with pytest.raises(ShardError, match=r"val-00001.npy is \d+ bytes.*dvc repro preprocess"):
        pre.reader()
    shard.unlink()
    with pytest.raises(ShardError, match="val-00001.npy is missing.*dvc repro preprocess"):
        pre.reader()
    (pre.shards / MANIFEST).unlink()
    with pytest.raises(MissingInputError, match="manifest.json not found"):
        ShardReader(pre.shards)


def test_a_failed_write_keeps_the_old_folder_and_leaves_no_temporary(tmp_path, monkeypatch):
    pre = _write(tmp_path, _subsets())
    before = pre.manifest.read_bytes()
    with (
        pytest.raises(RuntimeError, match="killed"),
        ShardWriter(
            pre.shards, image_shape=SHAPE, counts={"train": 3}, classes=["a"], params={}
        ) as w,
    ):
        w.append("train", np.zeros((3, *SHAPE), np.uint8), np.zeros(3, np.int64))
        raise RuntimeError("killed")
    assert pre.manifest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "_open_shard", full)
    with pytest.raises(ShardError, match=r"shards: the disk is full.*free space"):
        _write(tmp_path, _subsets())
    assert pre.manifest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_a_new_folder_replaces_the_old_one_whole(tmp_path):
    _write(tmp_path, _subsets())
    pre = _write(tmp_path, _subsets(n_train=9, n_val=2, n_test=1))
    assert pre.reader().counts == {"train": 9, "val": 2, "test": 1}
    assert not (pre.shards / "train-00005.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_streamed_batches_are_todays_in_memory_batches(tmp_path):
    """Shuffling indices with the same n and seed, then reading the rows, gives the batches
    ``from_tensor_slices((x, y)).shuffle(n, seed)`` gave, in the same order, epoch after epoch;
    a refit trains on train rows then validation rows, shuffled the same way."""
    import tensorflow as tf

    from imgclf.training import make_datasets, refit_rows

    subsets = _subsets(n_train=37, n_val=11)
    reader = _write(tmp_path, subsets).reader()
    data = {s: reader.subset(s) for s in ("train", "val")}
    n_classes, batch, seed = 3, 8, 42

    def old(x, y):  # main's make_datasets over in-memory tensors
        onehot = np.eye(n_classes, dtype=np.float32)[y]
        return (
            tf.data.Dataset.from_tensor_slices((x, onehot))
            .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
            .batch(batch)
        )

    def epochs(ds, k=3):
        it = []
        for _ in range(k):
            it.append([(a.numpy(), b.numpy()) for a, b in ds])
        return it

    def same(a, b):
        assert len(a) == len(b)
        for ea, eb in zip(a, b, strict=True):
            assert len(ea) == len(eb)
            for (xa, ya), (xb, yb) in zip(ea, eb, strict=True):
                assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
                assert np.array_equal(xa, xb) and np.array_equal(ya, yb)

    new_train, new_val = make_datasets(data, n_classes, batch, seed)
    x, y = subsets["train"]
    old_epochs = epochs(old(x, y))
    assert not np.array_equal(old_epochs[0][0][0], x[:batch])  # it does shuffle
    same(old_epochs, epochs(new_train))
    # Validation: in order, batched.
    xv, yv = subsets["val"]
    want = [(xv[i : i + batch], np.eye(3, dtype=np.float32)[yv[i : i + batch]]) for i in (0, 8)]
    same([want], epochs(new_val, 1))

    refit = refit_rows(data)
    assert refit["val"].n == 0
    refit_train, refit_val = make_datasets(refit, n_classes, batch, seed)
    assert refit_val is None
    same(epochs(old(np.concatenate([x, xv]), np.concatenate([y, yv]))), epochs(refit_train))
