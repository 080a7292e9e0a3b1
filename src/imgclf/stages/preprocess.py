"""preprocess: resize every accepted image to the model size, split, and cache the tensors.

Training_data is split (stratified, seeded, near-duplicate groups kept on one side) into train
and validation; Testing_Data is the test set. All images are decoded here once, so no training
epoch decodes a JPEG.

Outputs: :class:`imgclf.artifacts.PreprocessOutputs` (the cached tensors, the class names, the
input spec that predict applies, each file's subset and leak flag, per-class counts, figures).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from imgclf import plots
from imgclf.artifacts import IngestOutputs, PreprocessOutputs
from imgclf.config import Config, DataConfig
from imgclf.images import load_resized
from imgclf.parallel import Engine, map_files

log = logging.getLogger(__name__)

SUBSETS = ("train", "val", "test")


@dataclass
class PreprocessResult:
    classes: list[str]
    counts: dict[str, int]
    dataset_path: Path


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

    load = partial(load_resized, height=data.image_height, width=data.image_width, fit=data.fit)
    ordered = [r for s in SUBSETS for r in subsets[s]]
    images = map_files(load, [data_dir / r["path"] for r in ordered], Engine.of(data))
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for s in SUBSETS:
        n = len(subsets[s])
        shape = (n, data.image_height, data.image_width, 3)
        arrays[f"x_{s}"] = np.stack(images[start : start + n]) if n else np.zeros(shape, np.uint8)
        arrays[f"y_{s}"] = np.array([class_id[r["class"]] for r in subsets[s]], dtype=np.int64)
        start += n

    out = PreprocessOutputs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out.save_dataset(arrays)
    out.write_classes(classes)
    # How a file becomes an input tensor: export records it with the model, so predict and
    # serve prepare new images exactly as training saw them.
    out.write_input_spec(input_spec(data))
    # Evaluate scores the test files without a twin in training (leak == 0) separately.
    out.write_split(subsets)

    per_class = {
        s: {c: int((arrays[f"y_{s}"] == i).sum()) for i, c in enumerate(classes)} for s in SUBSETS
    }
    out.write_counts(per_class)
    plots.class_counts(per_class, out.class_counts_png)
    plots.sample_grid(arrays["x_train"], arrays["y_train"].tolist(), classes, out.sample_grid_png)
    counts = {s: len(subsets[s]) for s in SUBSETS}
    log.info("preprocess: %s at %dx%d", counts, data.image_height, data.image_width)
    return PreprocessResult(classes, counts, out.dataset)
