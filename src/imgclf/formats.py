"""Every file format a model is exported to: write, load, check parity, hash and verify.

One inference model (raw uint8 RGB in, softmax out) is written as ``.h5``, ``.keras``, a
TensorFlow SavedModel, TFLite and ONNX. Each is loaded back through its own runtime (Keras,
``tf.saved_model``, the TFLite interpreter, onnxruntime) and compared with the Keras model on
real test images before it may be registered. A ``manifest.json`` (and the registry's version
tags) holds the sha256 of every file, and :func:`load_predictor` refuses a file whose bytes
changed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgclf.config import FITS, FORMAT_NAMES

log = logging.getLogger(__name__)

# Where each format lives inside an export folder (a SavedModel is a folder).
FORMAT_FILES: dict[str, str] = {
    "h5": "model.h5",
    "keras": "model.keras",
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
}
SUFFIX_FORMATS = {".h5": "h5", ".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}
MANIFEST = "manifest.json"
# Beside the model: input size and data.fit, how predict must prepare a file (light to import:
# predict reads it before any heavy module).
INPUT_SPEC = "input.json"


def read_fit(folder: Path) -> str:
    """``data.fit`` from ``folder``'s :data:`INPUT_SPEC` (a preprocess output or an export);
    ``stretch`` without one, since everything made before the file existed was stretched.

    Raises:
        ValueError: the recorded fit is not one this version knows (names the file).
    """
    import json

    spec = folder / INPUT_SPEC
    if not spec.is_file():
        return "stretch"
    fit = json.loads(spec.read_text(encoding="utf-8")).get("fit", "stretch")
    if fit not in FITS:
        raise ValueError(f"{spec}: fit {fit!r} is not one of {FITS}; re-run preprocess/export")
    return str(fit)


REQUIRED_FORMATS = ("h5", "keras")
assert tuple(FORMAT_FILES) == FORMAT_NAMES


class IntegrityError(RuntimeError):
    """A model file is missing from its manifest or its bytes differ from the recorded sha256."""


class Predictor(Protocol):
    """What every format loads as: uint8 images (N, H, W, 3) in, probabilities (N, C) out."""

    input_shape: tuple[int, ...]
    n_classes: int

    def predict(self, x: np.ndarray) -> np.ndarray: ...


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


# --- loading ---------------------------------------------------------------------------------


class KerasPredictor:
    """``.h5`` / ``.keras`` through Keras, ``safe_mode`` on (no arbitrary code on load)."""

    def __init__(self, path: Path, batch_size: int = 32) -> None:
        import keras

        self.model = keras.models.load_model(path, safe_mode=True, compile=False)
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self.model.input_shape[1:4])
        self.n_classes = int(self.model.output_shape[-1])
        self.batch_size = batch_size

    def predict(self, x: np.ndarray) -> np.ndarray:
        # predict_on_batch per chunk: model.predict builds a data adapter and iterator on every
        # call, which cost 5x the compute on the test set's 32-image batches
        if not len(x):
            return np.zeros((0, self.n_classes), np.float32)
        n = self.batch_size
        chunks = [self.model.predict_on_batch(x[i : i + n]) for i in range(0, len(x), n)]
        return np.concatenate([np.asarray(c) for c in chunks])


class SavedModelPredictor:
    """A TensorFlow SavedModel's ``serve`` endpoint (what TF Serving would call)."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))
        spec = self.loaded.signatures["serving_default"].structured_input_signature[1]
        (tensor_spec,) = spec.values()
        self.dtype = tensor_spec.dtype
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in tensor_spec.shape[1:4])
        out = self.loaded.signatures["serving_default"].structured_outputs
        (out_spec,) = out.values()
        self.n_classes = int(out_spec.shape[-1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.loaded.serve(self._tf.constant(x, dtype=self.dtype)))


class TFLitePredictor:
    """A ``.tflite`` file through TensorFlow's bundled TFLite interpreter."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():
            # TF marks tf.lite.Interpreter deprecated in favour of the ai-edge-litert package;
            # it still ships and runs in TF 2.21, and avoids a second runtime dependency.
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=2)
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._in["shape"][1:4])
        self.n_classes = int(self._out["shape"][-1])
        # An interpreter holds one set of tensors: concurrent calls (the HTTP server) take turns.
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        # The declared input dtype decides the cast (uint8 for our models; a float32 file gets
        # the same 0-255 values, since rescaling is inside the graph).
        x = np.ascontiguousarray(x, dtype=self._in["dtype"])
        with self._lock:
            self.interpreter.resize_tensor_input(self._in["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self.interpreter.set_tensor(self._in["index"], x)
            self.interpreter.invoke()
            return np.array(self.interpreter.get_tensor(self._out["index"]))


ONNX_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxPredictor:
    """A ``.onnx`` file through onnxruntime on the CPU."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        if inp.type not in ONNX_DTYPES:
            raise ValueError(f"{path}: unsupported ONNX input type {inp.type}")
        self._name, self._dtype = inp.name, ONNX_DTYPES[inp.type]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in inp.shape[1:4])
        self.n_classes = int(self.session.get_outputs()[0].shape[-1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self._name: x.astype(self._dtype)})[0])


LOADERS: dict[str, Callable[[Path], Predictor]] = {
    "h5": KerasPredictor,
    "keras": KerasPredictor,
    "saved_model": SavedModelPredictor,
    "tflite": TFLitePredictor,
    "onnx": OnnxPredictor,
}


def format_of(path: Path) -> str | None:
    """The format a path holds, from its suffix or (a folder) its ``saved_model.pb``."""
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").is_file() else None
    return SUFFIX_FORMATS.get(path.suffix)


# --- hashing and verification ----------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path, rel: str) -> dict[str, str]:
    """``{relative path: sha256}`` for the file ``root/rel``, or every file under that folder."""
    target = root / rel
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def verify_files(root: Path, rel: str, expected: Mapping[str, str]) -> None:
    """Check that ``root/rel`` holds exactly the files ``expected`` lists, with those bytes.

    Raises:
        IntegrityError: naming the first file that is missing, extra or changed.
    """
    wanted = {k: v for k, v in expected.items() if k == rel or k.startswith(f"{rel}/")}
    if not wanted:
        raise IntegrityError(f"{rel}: no sha256 recorded for it; refusing an unverified model")
    actual = hash_tree(root, rel) if (root / rel).exists() else {}
    for name, digest in sorted(wanted.items()):
        if name not in actual:
            raise IntegrityError(f"{root / name}: missing (sha256 recorded at export)")
        if actual[name] != digest:
            raise IntegrityError(
                f"{root / name}: sha256 {actual[name][:12]}… differs from the {digest[:12]}… "
                "recorded at export; the file was changed or corrupted, refusing to load it"
            )
    extra = sorted(set(actual) - set(wanted))
    if extra:
        raise IntegrityError(f"{root / extra[0]}: not part of the exported model; refusing")


def load_predictor(
    fmt: str, root: Path, expected: Mapping[str, str] | None, rel: str | None = None
) -> Predictor:
    """Load format ``fmt`` from the export folder ``root``, verifying its sha256 first.

    Args:
        expected: ``{relative path: sha256}`` (manifest or version tags); ``None`` skips the
            check, for a file that has no manifest beside it (the caller warns).
        rel: the file's name under ``root`` when not export's own (``FORMAT_FILES``).
    """
    rel = rel or FORMAT_FILES[fmt]
    if expected is not None:
        verify_files(root, rel, expected)
    return LOADERS[fmt](root / rel)


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
    import shutil

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
