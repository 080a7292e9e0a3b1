"""predict: classify new image files with a registered model or a saved ``.h5``/``.keras`` file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.dataset import is_hidden
from imgclf.fileio import read_json
from imgclf.images import ImageRejected, load_resized

log = logging.getLogger(__name__)

REGISTRY_SCHEME = "models:/"
DEFAULT_MODEL_URI = f"{REGISTRY_SCHEME}idcards@champion"
MODEL_SUFFIXES = (".h5", ".keras")


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message says which and what to do."""


@dataclass
class LoadedModel:
    model: Any
    classes: list[str]
    height: int
    width: int
    source: str


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    probabilities: dict[str, float] | None = None
    error: str | None = None


def load_model(spec: str) -> LoadedModel:
    """Load a model from a file path (``.h5``/``.keras``) or a registry URI (``models:/...``).

    A file's class names come from ``classes.json`` beside it (export writes one). Keras loads
    either in safe mode: a file that would run embedded code (a Lambda layer) is refused.
    """
    path = Path(spec)
    if path.suffix in MODEL_SUFFIXES or path.exists():
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        if path.suffix not in MODEL_SUFFIXES:
            raise ModelLoadError(f"{path}: expected a .h5 or .keras file")
        import keras

        try:
            model = keras.models.load_model(path, safe_mode=True, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad files
            raise ModelLoadError(f"{path}: cannot load model: {exc}") from exc
        sidecar = path.parent / "classes.json"
        n_out = int(model.output_shape[-1])
        classes = read_json(sidecar) if sidecar.is_file() else [str(i) for i in range(n_out)]
        if not sidecar.is_file():
            log.warning("%s not found: printing class indices instead of names", sidecar)
        height, width = (int(d) for d in model.input_shape[1:3])
        return LoadedModel(model, list(classes), height, width, str(path))

    if not spec.startswith(REGISTRY_SCHEME):
        # Only the registry or a file the user names: never a run, bucket or web address that
        # a config or a typo could point at.
        raise ModelLoadError(
            f"{spec}: not a model file and not a registry URI; pass a .h5/.keras file or "
            f"{REGISTRY_SCHEME}<name>@<alias> (or /<version>)"
        )
    from imgclf import tracking

    tracking.configure()
    try:
        model, metadata = tracking.load_registered_keras_model(spec)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for missing models
        raise ModelLoadError(
            f"{spec}: cannot load from the MLflow store {tracking.tracking_uri()} ({exc}). "
            "Run `make repro` to train and register a model, or pass --model FILE.h5"
        ) from exc
    height, width = (int(d) for d in model.input_shape[1:3])
    return LoadedModel(model, list(metadata["classes"]), height, width, spec)


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively, skipping hidden entries), keeping order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*")
                if f.is_file() and not any(is_hidden(part) for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def predict_files(loaded: LoadedModel, files: list[Path], batch_size: int = 32) -> list[Prediction]:
    """Predict each file; a file that cannot be decoded gets an error entry, never dropped."""
    results: list[Prediction | None] = [None] * len(files)
    images, positions = [], []
    for i, f in enumerate(files):
        try:
            images.append(load_resized(f, loaded.height, loaded.width))
            positions.append(i)
        except ImageRejected as exc:
            results[i] = Prediction(str(f), None, None, error=f"{exc.reason}: {exc.detail}")
    if images:
        probs = loaded.model.predict(np.stack(images), batch_size=batch_size, verbose=0)
        for i, p in zip(positions, probs, strict=True):
            k = int(np.argmax(p))
            results[i] = Prediction(
                str(files[i]), loaded.classes[k], float(p[k]),
                {c: float(v) for c, v in zip(loaded.classes, p, strict=True)},
            )
    return [r for r in results if r is not None]
