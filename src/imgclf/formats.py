"""Every file format a model is exported to: write it, load it back, check its parity.

One inference model (raw uint8 RGB in, softmax out) is written as ``.h5``, ``.keras``, a
TensorFlow SavedModel, TFLite and ONNX. Each is loaded back through its own runtime
(:mod:`imgclf.predictors`) and compared with the Keras model on real test images before it may be
registered; :func:`manifest` records the sha256 of the files that passed.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.artifacts import FORMAT_FILES
from imgclf.predictors import LOADERS, hash_tree

log = logging.getLogger(__name__)

REQUIRED_FORMATS = ("h5", "keras")


@dataclass
class ParityResult:
    """How one format's predictions compare with the Keras model's on the same images."""

    format: str
    valid: bool
    n_images: int
    label_agreement: float
    max_abs_diff: float
    reason: str = ""


# --- writing ---------------------------------------------------------------------------------


def _write_h5(model: Any, path: Path) -> None:
    model.save(path)


def _write_keras(model: Any, path: Path) -> None:
    model.save(path)


def _write_saved_model(model: Any, path: Path) -> None:
    model.export(str(path), format="tf_saved_model", verbose=False)


def _write_tflite(model: Any, path: Path) -> None:
    # Keras's LiteRT exporter runs tf.lite.TFLiteConverter on the model's call signature; the
    # uint8 input survives (no quantisation asked for), so the file takes the same pixels.
    model.export(str(path), format="litert", verbose=False)


def _write_onnx(model: Any, path: Path) -> None:
    # Keras's ONNX export goes through tf2onnx on the TensorFlow backend; the uint8 input stays
    # uint8 in the graph, so onnxruntime gets the same raw pixels as every other format.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx", verbose=False)


WRITERS: dict[str, Callable[[Any, Path], None]] = {
    "h5": _write_h5,
    "keras": _write_keras,
    "saved_model": _write_saved_model,
    "tflite": _write_tflite,
    "onnx": _write_onnx,
}


def write_format(model: Any, fmt: str, out_dir: Path) -> Path:
    """Write ``model`` in format ``fmt`` under ``out_dir``; return the file (or folder)."""
    target = out_dir / FORMAT_FILES[fmt]
    WRITERS[fmt](model, target)
    return target


# --- parity ----------------------------------------------------------------------------------


def check_parity(
    fmt: str, reference: np.ndarray, predicted: np.ndarray, max_abs_diff: float
) -> ParityResult:
    """Compare a format's probabilities with the Keras model's on the same images."""
    n = len(reference)
    if predicted.shape != reference.shape:
        return ParityResult(
            fmt,
            False,
            n,
            0.0,
            float("inf"),
            f"output shape {predicted.shape} != Keras {reference.shape}",
        )
    agree = float(np.mean(predicted.argmax(axis=1) == reference.argmax(axis=1)))
    diff = float(np.max(np.abs(predicted.astype(np.float64) - reference))) if n else 0.0
    reasons = []
    if agree < 1.0:
        reasons.append(f"{round((1 - agree) * n)} of {n} predicted labels differ from Keras")
    if not diff <= max_abs_diff:  # also catches NaN
        reasons.append(f"max probability difference {diff:.3g} > {max_abs_diff:g}")
    return ParityResult(fmt, not reasons, n, agree, diff, "; ".join(reasons))


def export_and_check(
    model: Any, formats: list[str], out_dir: Path, images: np.ndarray, max_abs_diff: float
) -> list[ParityResult]:
    """Write each format into ``out_dir``, load it back and check its parity on ``images``.

    A format that cannot be written or loaded is a failed check with the error as its reason;
    its partial files are removed so that nothing unchecked sits in the folder.
    """
    reference = np.asarray(model.predict(images, verbose=0), dtype=np.float64)
    results = []
    for fmt in formats:
        try:
            write_format(model, fmt, out_dir)
            predicted = LOADERS[fmt](out_dir / FORMAT_FILES[fmt]).predict(images)
            result = check_parity(fmt, reference, predicted, max_abs_diff)
        except Exception as exc:  # noqa: BLE001 - every converter fails in its own way
            log.exception("export: %s failed", fmt)
            result = ParityResult(
                fmt,
                False,
                len(images),
                0.0,
                float("inf"),
                f"{type(exc).__name__}: {exc}".splitlines()[0],
            )
        if not result.valid:
            target = out_dir / FORMAT_FILES[fmt]
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        results.append(result)
    return results


def manifest(root: Path, formats: list[str]) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of ``formats`` under the model folder ``root``."""
    out: dict[str, str] = {}
    for fmt in formats:
        out |= hash_tree(root, FORMAT_FILES[fmt])
    return out
