"""export: write the model in every format, check each against Keras, register a new version.

Formats (``export.formats``): ``h5`` (the format users asked for), ``keras``, a TensorFlow
``saved_model``, ``tflite`` and ``onnx`` (files named by :data:`imgclf.artifacts.FORMAT_FILES`),
all from the same inference model (raw uint8 RGB in, softmax out). Each file is loaded back
through its own runtime and run on a batch of real test images: the predicted labels must equal
Keras's and no probability may differ by more than ``export.parity_max_abs_diff``. A format
that fails is left out of the version and tagged ``format.<name> = invalid: <why>``; ``h5`` and
``keras`` must pass.

Interrupt safety: everything is written and checked in a staging folder first; the files are
stored in MLflow before the version is created (with all its tags at once), and a version whose
aliases cannot be set is deleted again. So the registry never holds a version without its files.

Outputs: :class:`imgclf.artifacts.ExportOutputs`: the model folder (every valid format, the
class names, the input size and aspect fit that predict applies to new images, the sha256 of
every file and the per-format parity: the very folder the version stores), the parity again as a
DVC metric, and what was registered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import registry, tracking
from imgclf.artifacts import (
    EvaluateOutputs,
    ExportOutputs,
    ModelFolder,
    PreprocessOutputs,
    TrainOutputs,
)
from imgclf.config import Config
from imgclf.errors import ExportError
from imgclf.formats import REQUIRED_FORMATS, export_and_check, manifest
from imgclf.lineage import lineage_tags

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    name: str
    version: str
    aliases: list[str]
    run_id: str
    valid_formats: list[str]
    invalid_formats: dict[str, str]


def _parity_metrics(parity: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in parity:
        out[f"parity_{p.format}_valid"] = float(p.valid)
        out[f"parity_{p.format}_label_agreement"] = p.label_agreement
        if np.isfinite(p.max_abs_diff):
            out[f"parity_{p.format}_max_abs_diff"] = p.max_abs_diff
    return out


def run(
    cfg: Config, *, preprocess_dir: Path, train_dir: Path, evaluate_dir: Path, out_dir: Path
) -> ExportResult:
    """Export ``train_dir``'s model and register it under ``cfg.mlflow.registered_model_name``."""
    from imgclf.model import inference_model

    started = time.perf_counter()
    pre, train_out = PreprocessOutputs(preprocess_dir), TrainOutputs(train_dir)
    trained = train_out.load_model()
    model = inference_model(trained)
    classes = pre.read_classes()
    spec = pre.read_input_spec()
    if (spec["image_height"], spec["image_width"]) != tuple(model.input_shape[1:3]):
        raise ExportError(
            f"{pre.input_spec} says {spec['image_height']}x{spec['image_width']} "
            f"but the model takes {model.input_shape[1]}x{model.input_shape[2]}: "
            "run `dvc repro` so preprocess and train agree"
        )
    metrics = EvaluateOutputs(evaluate_dir).read_metrics()
    arrays = pre.load_dataset()
    pool = arrays["x_test"] if len(arrays["x_test"]) else arrays["x_train"]
    images = pool[: cfg.export.parity_samples]
    example = images[:1]
    if not np.allclose(
        model.predict(images, verbose=0), trained.predict(images, verbose=0), atol=1e-5
    ):
        raise RuntimeError("inference model disagrees with the trained model")

    out_dir.mkdir(parents=True, exist_ok=True)
    # Staged beside the outputs (same filesystem: the final move is one rename).
    staging = ModelFolder(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        return _export(
            cfg,
            model,
            classes,
            spec,
            metrics,
            images,
            example,
            staging,
            train_out.read_run_id(),
            ExportOutputs(out_dir),
            started,
        )
    finally:
        shutil.rmtree(staging.root, ignore_errors=True)


def _export(
    cfg: Config,
    model: Any,
    classes: list[str],
    spec: dict[str, Any],
    metrics: dict[str, Any],
    images: np.ndarray,
    example: np.ndarray,
    staging: ModelFolder,
    train_run_id: str,
    out: ExportOutputs,
    started: float,
) -> ExportResult:
    """Write and check every format in ``staging``, register it, then publish it locally."""
    parity = export_and_check(
        model, list(cfg.export.formats), staging.root, images, cfg.export.parity_max_abs_diff
    )
    valid = [p.format for p in parity if p.valid]
    invalid = {p.format: p.reason for p in parity if not p.valid}
    for fmt, why in invalid.items():
        log.warning("export: %s is NOT valid and will not be registered: %s", fmt, why)
    missing = [f for f in REQUIRED_FORMATS if f not in valid]
    if missing:
        raise ExportError(
            f"required format(s) {', '.join(missing)} failed: "
            + "; ".join(f"{f}: {invalid[f]}" for f in missing)
        )
    hashes = manifest(staging.root, valid)
    staging.write_classes(classes)
    staging.write_input_spec(spec)
    staging.write_parity({p.format: asdict(p) for p in parity})
    staging.write_manifest(hashes)
    log.info(
        "export: %d formats written and checked in %.1f s (%s)",
        len(parity),
        time.perf_counter() - started,
        ", ".join(
            f"{p.format} {'ok' if p.valid else 'FAILED'} max|Δp|={p.max_abs_diff:.2g}"
            for p in parity
        ),
    )

    name = cfg.mlflow.registered_model_name
    height, width = (int(d) for d in model.input_shape[1:3])
    tags = lineage_tags()
    version_tags = {
        **tags,
        "test_accuracy": f"{metrics['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['macro_f1']:.4f}",
        "classes": json.dumps(classes),
        "image_height": str(height),
        "image_width": str(width),
        "image_fit": spec["fit"],
        registry.FORMATS_TAG: ",".join(valid),
        **{
            f"format.{p.format}": "valid" if p.valid else f"invalid: {p.reason}"[:5000]
            for p in parity
        },
        **{f"parity.{p.format}.max_abs_diff": f"{p.max_abs_diff:.3g}" for p in parity},
        **{f"parity.{p.format}.label_agreement": f"{p.label_agreement:.4f}" for p in parity},
        **{f"{registry.SHA_PREFIX}{rel}": digest for rel, digest in hashes.items()},
    }
    if metrics.get("leakfree_accuracy") is not None:
        version_tags["test_leakfree_accuracy"] = f"{metrics['leakfree_accuracy']:.4f}"
    with tracking.open_run(cfg.mlflow.experiment_name, "export", run_id=train_run_id) as run_id:
        # Files first, version second: the version is created only once every file it
        # names is stored, with all its tags in the same call.
        source = tracking.log_model_with_files(
            model,
            input_example=example,
            metadata={
                "classes": classes,
                "image_height": height,
                "image_width": width,
                "image_fit": spec["fit"],
                "formats": valid,
            },
            files_dir=staging.root,
            metrics=_parity_metrics(parity),
        )
        version = tracking.register_version(name, source, {**version_tags, "run_id": run_id})
        try:
            aliases = _set_aliases(cfg, name, version)
        except BaseException:
            log.error("export: could not set aliases; deleting version %s again", version)
            tracking.delete_version(name, version)
            raise
    # The checked folder becomes the export's model folder in one rename, the same layout
    # as the registered version's.
    if out.formats.exists():
        shutil.rmtree(out.formats)
    os.replace(staging.root, out.formats)
    shutil.copy(out.model.parity, out.parity)

    out.write_registered(
        {
            "name": name,
            "version": version,
            "aliases": aliases,
            "run_id": run_id,
            "uri": f"models:/{name}/{version}",
            "formats": valid,
            "invalid": invalid,
        },
    )
    log.info(
        "export: registered %s version %s (aliases: %s) in %.1f s",
        name,
        version,
        ", ".join(aliases),
        time.perf_counter() - started,
    )
    return ExportResult(name, version, aliases, run_id, valid, invalid)


def _set_aliases(cfg: Config, name: str, version: str) -> list[str]:
    """``challenger`` always moves to the new version; ``champion`` only when there is none.

    Replacing an existing champion is ``imgclf promote``'s job, behind its gate.
    """
    tracking.set_alias(name, cfg.export.challenger_alias, version)
    aliases = [cfg.export.challenger_alias]
    try:
        tracking.get_version(name, alias=cfg.export.champion_alias)
    except LookupError:
        registry.move_alias(
            name,
            cfg.export.champion_alias,
            version,
            reason="first registered version (no champion yet)",
        )
        aliases.append(cfg.export.champion_alias)
    return aliases
