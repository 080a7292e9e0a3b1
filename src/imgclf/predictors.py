"""Load any exported format as a :class:`Predictor`, verified against its sha256 first.

Each format is loaded through its own runtime (Keras, ``tf.saved_model``, the TFLite
interpreter, onnxruntime). A model folder's manifest (and the registry's version tags) holds the
sha256 of every file that export wrote and checked, and :func:`load_predictor` refuses a file
whose bytes changed. Writing and checking the formats is :mod:`imgclf.formats`.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from imgclf.artifacts import FORMAT_FILES
from imgclf.errors import ImgclfError

# A single file's format from its suffix (a SavedModel is a folder).
SUFFIX_FORMATS = {Path(f).suffix: fmt for fmt, f in FORMAT_FILES.items() if Path(f).suffix}


class IntegrityError(ImgclfError, RuntimeError):
    """A model file is missing from its manifest or its bytes differ from the recorded sha256."""


class Predictor(Protocol):
    """What every format loads as: uint8 images (N, H, W, 3) in, probabilities (N, C) out."""

    input_shape: tuple[int, ...]
    n_classes: int

    def predict(self, x: np.ndarray) -> np.ndarray: ...


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

        options = ort.SessionOptions()
        # No busy-waiting after a run: in the HTTP server, onnxruntime's spinning threads took
        # CPU from the threads decoding the next images (results are the same either way).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
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
