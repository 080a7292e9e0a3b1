"""preprocess: resize every accepted image to the model size, split, and write them as shards.

Training_data is split (stratified, seeded, near-duplicate groups kept on one side) into train
and validation; Testing_Data is the test set. All images are decoded here once, so no training
epoch decodes a JPEG. Images are decoded a bounded chunk at a time and streamed into
fixed-size shards (:mod:`imgclf.artifacts.shards`), so memory does not grow with the dataset.

Outputs: :class:`imgclf.artifacts.PreprocessOutputs` (the shards with their manifest, the class
names, the input spec that predict applies, each file's subset and leak flag, per-class counts,
figures).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from imgclf import plots
from imgclf.artifacts import IngestOutputs, PreprocessOutputs, rows_per_shard
from imgclf.config import Config, DataConfig
from imgclf.data.cache import DecodeCache
from imgclf.images import __file__ as DECODER_SOURCE
from imgclf.images import load_resized
from imgclf.parallel import Engine, map_files_in_chunks

log = logging.getLogger(__name__)

SUBSETS = ("train", "val", "test")
CHUNK_ROWS = 1024  # images decoded per step: about 19 MB at 64x96, 150 MB at 224x224
GRID_PER_CLASS = 6


@dataclass
class PreprocessResult:
    classes: list[str]
    counts: dict[str, int]
    shards_path: Path


def split_train_val(
    labels: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of indices into (train, val).

    With ``groups`` (near-duplicate group ids), every group lands wholly on one side, so
    validation accuracy is not memorisation: scikit-learn's ``StratifiedGroupKFold`` with
    ``round(1 / val_fraction)`` folds, its first fold as validation (so the fraction is
    approximate, e.g. 0.2 -> 5 folds). Without duplicates it is the plain stratified split.
    """
    idx = np.arange(len(labels))
    if groups is None or len(np.unique(groups)) == len(groups):
        train_idx, val_idx = train_test_split(
            idx, test_size=val_fraction, random_state=seed, stratify=labels
        )
        return np.sort(train_idx), np.sort(val_idx)
    n_splits = max(2, round(1 / val_fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(idx, labels, groups))
    return np.sort(train_idx), np.sort(val_idx)


def input_spec(data: DataConfig) -> dict[str, int | str]:
    """The model input's preparation: ``{"image_height", "image_width", "fit"}``."""
    return {"image_height": data.image_height, "image_width": data.image_width, "fit": data.fit}


def run(cfg: Config, *, data_dir: Path, ingest_dir: Path, out_dir: Path) -> PreprocessResult:
    """Resize, split and cache the dataset indexed by ingest."""
    data = cfg.data
    ingested = IngestOutputs(ingest_dir)
    classes = ingested.read_classes()
    class_id = {c: i for i, c in enumerate(classes)}
    rows = ingested.read_index()
    train_rows = [r for r in rows if r["split"] == data.train_dir]
    test_rows = [r for r in rows if r["split"] == data.test_dir]
    y_all = np.array([class_id[r["class"]] for r in train_rows], dtype=np.int64)
    groups = np.array([int(r["group"]) for r in train_rows]) if train_rows else None
    tr_idx, va_idx = split_train_val(y_all, data.val_fraction, data.split_seed, groups)
    subsets = {
        "train": [train_rows[i] for i in tr_idx],
        "val": [train_rows[i] for i in va_idx],
        "test": test_rows,
    }

    out = PreprocessOutputs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (data.image_height, data.image_width, 3)
    counts = {s: len(subsets[s]) for s in SUBSETS}
    # A file decoded before with this spec (and this decoder) is read back, not decoded again.
    cache = DecodeCache.at(data.cache_dir, input_spec(data), Path(DECODER_SOURCE).read_bytes())
    load = partial(
        load_resized, height=data.image_height, width=data.image_width, fit=data.fit, cache=cache
    )
    # Decoded a chunk at a time and appended to the current shard: memory holds one shard's
    # write buffer and one chunk, at any dataset size.
    chunk = min(CHUNK_ROWS, rows_per_shard(shape))
    with out.shard_writer(
        image_shape=shape, counts=counts, classes=classes, params=input_spec(data)
    ) as writer:
        for s in SUBSETS:
            rows = subsets[s]
            paths = [data_dir / r["path"] for r in rows]
            labels = np.array([class_id[r["class"]] for r in rows], dtype=np.int64)
            start = 0
            for images in map_files_in_chunks(load, paths, chunk, Engine.of(data)):
                writer.append(s, np.stack(images), labels[start : start + len(images)])
                start += len(images)
    out.write_classes(classes)
    # How a file becomes an input tensor: export records it with the model, so predict and
    # serve prepare new images exactly as training saw them.
    out.write_input_spec(input_spec(data))
    # Evaluate scores the test files without a twin in training (leak == 0) separately.
    out.write_split(subsets)

    reader = out.reader()
    train = reader.subset("train")
    per_class = {
        s: {c: int((reader.subset(s).labels == i).sum()) for i, c in enumerate(classes)}
        for s in SUBSETS
    }
    out.write_counts(per_class)
    plots.class_counts(per_class, out.class_counts_png)
    shown = np.concatenate(  # the grid's images only: the first few of each class
        [np.flatnonzero(train.labels == i)[:GRID_PER_CLASS] for i in range(len(classes))]
    ).astype(np.int64)
    plots.sample_grid(
        train.rows(shown),
        train.labels[shown].tolist(),
        classes,
        out.sample_grid_png,
        per_class=GRID_PER_CLASS,
    )
    reader.close()
    log.info("preprocess: %s at %dx%d", counts, data.image_height, data.image_width)
    return PreprocessResult(classes, counts, out.shards)
