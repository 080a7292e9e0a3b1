"""Measure registered versions on the pinned test set, each on images prepared its way.

A version is loaded from the registry (files verified against their sha256 tags) and evaluated
here, now, with :func:`imgclf.metrics.score`, on preprocess's test tensors and leak flags. A
version trained on another input size or ``data.fit`` than the cached tensors (an older champion,
say) is measured on the same test files, decoded from the data folder and prepared the way that
version expects, so two versions are compared on the same files, each fairly. The gate that
judges the numbers is :mod:`imgclf.promote`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import registry
from imgclf.artifacts import PreprocessOutputs, Rows
from imgclf.config import Config
from imgclf.errors import MissingInputError
from imgclf.images import ImageRejected, load_resized
from imgclf.metrics import score
from imgclf.tracking import VersionInfo

SHOWN_METRICS = ("accuracy", "leakfree_accuracy", "macro_f1", "leakfree_macro_f1")


@dataclass
class Measured:
    """A version and what it scored on the pinned test set (``None`` where not measurable)."""

    version: str
    data_md5: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    problem: str = ""
    # "HxW, data.fit=F" when its test tensors were prepared for it from the files
    prepared: str = ""


# (height, width, fit) -> the test images, in test-tensor order, prepared that way
Prepare = Callable[[int, int, str], np.ndarray]


def test_file_preparer(preprocess_dir: Path, data_dir: Path) -> Prepare:
    """Prepare the test files that preprocess's split lists (its ``test`` rows, in tensor order)
    from ``data_dir`` at another input size or fit, for a version trained that way.

    The returned function raises :class:`FileNotFoundError` naming the first missing file and
    what to do, and :class:`imgclf.images.ImageRejected` for a file that does not decode.
    """
    paths = [data_dir / r["path"] for r in PreprocessOutputs(preprocess_dir).read_split("test")]

    def prepare(height: int, width: int, fit: str) -> np.ndarray:
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise MissingInputError(f"{missing}: test file not found (run `dvc pull data.dvc`)")
        return np.stack([load_resized(p, height, width, fit) for p in paths])

    return prepare


def measure(
    info: VersionInfo,
    cfg: Config,
    *,
    x: np.ndarray | Rows,
    y: np.ndarray,
    leak: np.ndarray,
    classes: list[str],
    fit: str = "stretch",
    prepare: Prepare | None = None,
) -> Measured:
    """Evaluate one version's ``promote.format`` file on the test set.

    ``x`` holds the test images made with ``fit`` (an array, or the reader's rows, read a batch
    at a time); a version that takes another input size or
    ``data.fit`` is measured on ``prepare(height, width, its_fit)`` instead (the same files,
    same order), or gets a ``problem`` when there is no ``prepare`` or it fails.
    """
    out = Measured(info.version, info.tags.get("data_md5", "unknown"))
    try:
        if registry.version_classes(info) != classes:
            out.problem = (
                f"classes {registry.version_classes(info)} differ from the test set's {classes}"
            )
            return out
        predictor = registry.load_version(info, cfg.promote.format)
    except Exception as exc:  # noqa: BLE001 - a version that cannot load cannot be promoted
        out.problem = f"cannot load: {exc}"
        return out
    height, width = (int(d) for d in predictor.input_shape[:2])
    its_fit = registry.version_fit(info)
    if (height, width) != tuple(x.shape[1:3]) or its_fit != fit:
        wants = f"{height}x{width}, data.fit={its_fit}"
        if prepare is None:
            out.problem = (
                f"takes {wants} images; the test tensors are {x.shape[1]}x{x.shape[2]}, "
                f"data.fit={fit}"
            )
            return out
        try:
            x = prepare(height, width, its_fit)
        except (FileNotFoundError, ImageRejected) as exc:
            out.problem = f"takes {wants} images; preparing the test files that way failed: {exc}"
            return out
        out.prepared = wants
    bs = cfg.promote.batch_size
    probs = np.concatenate([predictor.predict(x[i : i + bs]) for i in range(0, len(x), bs)])
    y_pred = probs.argmax(axis=1)
    m: dict[str, Any] = score(y, y_pred, leak, classes)
    out.metrics = {k: m.get(k) for k in SHOWN_METRICS}
    return out
