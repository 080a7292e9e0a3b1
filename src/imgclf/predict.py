"""predict: classify image files with a registered version or an exported file, any format.

An image too small to classify, or one the model is unsure of, is answered ``uncertain``
(:class:`imgclf.answers.ConfidenceRule`) rather than with a confident label; a file that cannot
be read or decoded gets an error entry and the rest go on (:func:`predict_files`).
:func:`imgclf.answers.write_results` writes them as text, JSON, JSON lines or CSV, safely for any
file name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.answers import ConfidenceRule, Prediction
from imgclf.artifacts import FORMAT_FILES, ExportOutputs, ModelFolder
from imgclf.dataset import is_hidden
from imgclf.errors import ImgclfError, MissingInputError
from imgclf.images import (
    DEFAULT_MAX_PIXELS,
    UNREADABLE,
    ImageRejected,
    Probe,
    decode_resized,
    draft_size,
    probe_bytes,
)
from imgclf.predictors import SUFFIX_FORMATS, Predictor

log = logging.getLogger(__name__)

# A registry URI or export folder with no --format: the first of these the version holds as
# valid. ONNX Runtime starts in a fraction of a second, TensorFlow in about ten on 2 cores,
# and export has checked that every format gives the Keras model's labels.
DEFAULT_FORMATS = ("onnx", "h5")


class ModelLoadError(ImgclfError, RuntimeError):
    """The model cannot be found, verified or loaded; the message says which and what to do."""


def default_model_uri(start: Path | None = None) -> str:
    """``models:/<mlflow.registered_model_name>@<export.champion_alias>``: the champion of the
    project that ``start`` (default: the working folder) is in, as its ``params.yaml`` names it.

    Outside a project, the names come from the ``conf/`` beside this package's source, the
    defaults every project starts from. Nothing is written.

    Raises:
        ModelLoadError: there is neither (an installed package run outside a project).
    """
    from imgclf.lineage import project_root

    params = project_root(start) / "params.yaml"
    if params.is_file():
        from imgclf.params import load_config

        cfg = load_config(params)
    else:
        from imgclf.compose import compose_config

        conf = Path(__file__).resolve().parents[2] / "conf"
        if not conf.is_dir():
            raise ModelLoadError(
                f"no params.yaml in {params.parent} and no conf/ beside the imgclf source: "
                "run inside the project, or pass --model (a models:/ URI, folder or file)"
            )
        cfg = compose_config(conf)
    return f"models:/{cfg.mlflow.registered_model_name}@{cfg.export.champion_alias}"


@dataclass
class LoadedModel:
    predictor: Predictor
    classes: list[str]
    height: int
    width: int
    source: str
    format: str
    fit: str = "stretch"  # data.fit the model was trained with (imgclf.images.fit_aspect)


def load_model(spec: str, fmt: str | None = None) -> LoadedModel:
    """Load a model, verifying its files' sha256 before any byte is deserialised.

    Args:
        spec: an MLflow URI (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), an export
            folder (``artifacts/export``), or one exported file / SavedModel folder.
        fmt: ``h5`` | ``keras`` | ``saved_model`` | ``tflite`` | ``onnx``; default: the first
            of :data:`DEFAULT_FORMATS` that a URI or folder holds, the file's own format for a
            file.

    A folder or file is checked against the manifest export wrote beside it; class names come
    from the class list there. A file with no manifest loads with a warning.
    """
    from imgclf.predictors import IntegrityError, format_of, load_predictor

    if spec.startswith("models:/"):
        return _load_registered(spec, fmt)
    path = Path(spec)
    if not path.exists():
        # Only the registry or a file the user names: never a run, bucket or web address that
        # a config or a typo could point at.
        raise ModelLoadError(
            f"{spec}: no such model file or folder, and not a registry URI "
            "(models:/NAME@ALIAS or models:/NAME/VERSION)"
        )
    exported = ExportOutputs(path).model
    if path.is_dir() and not ModelFolder(path).manifest.is_file() and exported.manifest.is_file():
        path = exported.root  # the export stage's folder: its files are in its model folder
    listed = ModelFolder(path).read_manifest() if path.is_dir() else None
    if listed is not None:
        held = [f for f in FORMAT_FILES if any(k.split("/")[0] == FORMAT_FILES[f] for k in listed)]
        root, fmt = path, fmt or _default_format(held, str(path))
        rel = FORMAT_FILES[fmt]
    else:
        own = format_of(path)
        if own is None:
            raise ModelLoadError(
                f"{path}: expected an export folder, a SavedModel folder or a "
                f"{', '.join(sorted(SUFFIX_FORMATS))} file"
            )
        if fmt is not None and fmt != own:
            raise ModelLoadError(f"{path}: is a {own} model, not {fmt}")
        root, fmt, rel = path.parent, own, path.name
    folder = ModelFolder(root)
    expected = folder.read_manifest()
    if expected is not None and not any(k == rel or k.startswith(f"{rel}/") for k in expected):
        expected = None  # a file export did not write under this name (renamed, or foreign)
    if expected is None:
        log.warning(
            "%s: not listed in a %s beside it, loading UNVERIFIED", root / rel, folder.manifest.name
        )
    try:
        predictor = load_predictor(fmt, root, expected, rel=rel)
    except IntegrityError as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - every runtime raises its own types for bad files
        raise ModelLoadError(f"{root / rel}: cannot load {fmt} model: {exc}") from exc
    if folder.classes.is_file():
        classes = folder.read_classes()
    else:
        log.warning("%s not found: printing class indices instead of names", folder.classes)
        classes = [str(i) for i in range(predictor.n_classes)]
    height, width = predictor.input_shape[:2]
    try:
        fit = folder.read_fit()
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    return LoadedModel(predictor, classes, height, width, str(root / rel), fmt, fit)


def _default_format(held: list[str], where: str) -> str:
    for fmt in DEFAULT_FORMATS:
        if fmt in held:
            return fmt
    if held:
        return held[0]
    raise ModelLoadError(
        f"{where}: holds no model file that passed its export check; "
        "register a new version (`make repro`) or pass --model FILE"
    )


def _load_registered(uri: str, fmt: str | None) -> LoadedModel:
    from imgclf import registry
    from imgclf.predictors import IntegrityError

    try:
        info = registry.resolve(uri)  # opens the store, creating none; says what exists
    except (LookupError, ValueError) as exc:
        raise ModelLoadError(f"{uri}: {exc}") from exc
    fmt = fmt or _default_format(registry.valid_formats(info), f"{uri} (version {info.version})")
    try:
        predictor = registry.load_version(info, fmt)
    except IntegrityError as exc:
        raise ModelLoadError(f"{uri} (version {info.version}): {exc}") from exc
    except LookupError as exc:
        raise ModelLoadError(str(exc)) from exc
    height, width = predictor.input_shape[:2]
    return LoadedModel(
        predictor,
        registry.version_classes(info),
        height,
        width,
        f"models:/{info.name}/{info.version}",
        fmt,
        registry.version_fit(info),
    )


def predict_arrays(loaded: LoadedModel, images: np.ndarray) -> list[Prediction]:
    """Predict a batch of decoded, resized uint8 images (no paths: the HTTP server's case)."""
    return to_predictions(loaded.classes, loaded.predictor.predict(images))


def to_predictions(classes: list[str], probs: np.ndarray) -> list[Prediction]:
    """One :class:`Prediction` (no path yet) per row of class probabilities."""
    out = []
    for p in probs:
        k = int(np.argmax(p))
        out.append(
            Prediction(
                "", classes[k], float(p[k]), {c: float(v) for c, v in zip(classes, p, strict=True)}
            )
        )
    return out


def prepare(loaded: LoadedModel, probe: Probe) -> np.ndarray:
    """A probed image as the model's input tensor, prepared as training prepared its images."""
    return decode_resized(probe, loaded.height, loaded.width, loaded.fit)


def probe_for(loaded: LoadedModel, data: bytes, source: str, max_pixels: int) -> Probe:
    """Read an image's header with the model's JPEG draft size set (nothing decoded yet)."""
    hint = draft_size(loaded.height, loaded.width)
    return probe_bytes(data, source, max_pixels=max_pixels, draft_size=hint)


def collect_images(paths: list[str]) -> list[Path]:
    """Expand folders (recursively, skipping hidden entries), keeping order; a path that does
    not exist stays in the list, for :func:`predict_files` to report.

    Raises:
        MissingInputError: none of the paths exists.
    """
    files: list[Path] = []
    missing = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(is_hidden(part) for part in f.relative_to(p).parts)
            )
        else:
            files.append(p)
            if not p.is_file():
                missing.append(p)
    if missing and len(missing) == len(files):
        raise MissingInputError(f"{missing[0]}: no such file or folder")
    return files


def predict_files(
    loaded: LoadedModel,
    files: list[Path],
    batch_size: int = 32,
    rule: ConfidenceRule | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Prediction]:
    """Predict each file in order; a file that cannot be read or decoded gets an error entry
    (its reason code and detail) and the others go on."""
    rule = rule or ConfidenceRule()
    results: list[Prediction | None] = [None] * len(files)
    images, positions, sides = [], [], []
    for i, f in enumerate(files):
        try:
            probe = probe_for(loaded, _read(f), str(f), max_pixels)
            images.append(prepare(loaded, probe))
            positions.append(i)
            sides.append(min(probe.width, probe.height))
        except ImageRejected as exc:
            results[i] = Prediction(str(f), None, None, error=f"{exc.reason}: {exc.detail}")
    for start in range(0, len(images), batch_size):
        chunk = np.stack(images[start : start + batch_size])
        span = slice(start, start + batch_size)
        preds = predict_arrays(loaded, chunk)
        for i, side, pred in zip(positions[span], sides[span], preds, strict=True):
            pred.path = str(files[i])
            results[i] = rule.judge(pred, side, (loaded.height, loaded.width))
    return [r for r in results if r is not None]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageRejected(path, UNREADABLE, exc.strerror or str(exc)) from exc
