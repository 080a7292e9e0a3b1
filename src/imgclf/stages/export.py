"""export: write the model in every format, check each against Keras, register it once.

Formats (``export.formats``): ``h5`` (the format users asked for), ``keras``, a TensorFlow
``saved_model``, ``tflite`` and ``onnx`` (files named by :data:`imgclf.artifacts.FORMAT_FILES`),
all from the same inference model (raw uint8 RGB in, softmax out). Each file is loaded back
through its own runtime and run on a batch of real test images: the predicted labels must equal
Keras's and no probability may differ by more than ``export.parity_max_abs_diff``. A format
that fails is left out of the version and tagged ``format.<name> = invalid: <why>``; ``h5`` and
``keras`` must pass.

Registration is a side effect DVC cannot see, so this stage reconciles with the registry every
time it runs (dvc.yaml turns DVC's run-cache off for it; docs/registry.md says why): a version
already exported from the same trained model file with the same settings
(:func:`imgclf.registry.find_export`) is reused, its files downloaded and verified, and its
missing aliases set; only otherwise is a new version registered. A kill at any point and a rerun
therefore leave one version per trained model, and the export folder holding that version's
very files.

Interrupt safety: one export at a time per output folder (a lock), and staging folders of killed
exports are removed first. Everything is written and checked in a staging folder; the files are
stored in MLflow before the version is created (with all its tags at once); a version whose
aliases cannot be set is deleted again. A stage whose ``dvc repro`` is gone refuses to register
or publish (:mod:`imgclf.orphans`).

Outputs: :class:`imgclf.artifacts.ExportOutputs`: the model folder (every valid format, the
class names, the input size and aspect fit that predict applies to new images, the sha256 of
every file and the per-format parity: the very folder the version stores), the parity again as a
small git-tracked file, and what was registered.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import card, orphans, registry, tracking
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
from imgclf.pauses import pause
from imgclf.predictors import sha256_file

log = logging.getLogger(__name__)

STAGING_PREFIX = ".export-"  # beside the outputs: the final move is one rename
LOCK_NAME = ".export.lock"
METRIC_TAGS = ("test_accuracy", "test_macro_f1", "test_leakfree_accuracy")


@dataclass
class ExportResult:
    name: str
    version: str
    aliases: list[str]
    run_id: str
    valid_formats: list[str]
    invalid_formats: dict[str, str]
    reused: bool = False  # the version existed already (a rerun): nothing new was registered


def export_settings(cfg: Config) -> str:
    """A short hash of the settings that shape a version's files (with the trained model's)."""
    e = cfg.export
    shape = {
        "formats": sorted(e.formats),
        "parity_samples": e.parity_samples,
        "parity_max_abs_diff": e.parity_max_abs_diff,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def run(
    cfg: Config, *, preprocess_dir: Path, train_dir: Path, evaluate_dir: Path, out_dir: Path
) -> ExportResult:
    """Export ``train_dir``'s model and register it under ``cfg.mlflow.registered_model_name``,
    or reuse the version already registered from it."""
    started = time.perf_counter()
    out = ExportOutputs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        for stale in out_dir.glob(f"{STAGING_PREFIX}*"):
            log.info("export: removing %s, left by an export that was killed", stale.name)
            shutil.rmtree(stale, ignore_errors=True)
        # mkdtemp's folder is 0700; the model folder inside it gets the umask's mode, and only
        # that one is moved into place.
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
        try:
            folder = ModelFolder(staging / out.formats.name)
            result, record = _export_or_reuse(
                cfg,
                PreprocessOutputs(preprocess_dir),
                TrainOutputs(train_dir),
                evaluate_dir,
                folder,
            )
            orphans.check("publish the export")
            if out.formats.exists():
                shutil.rmtree(out.formats)
            os.replace(folder.root, out.formats)
            shutil.copy(out.model.parity, out.parity)
            out.write_registered(record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "export: %s %s version %s (aliases: %s) in %.1f s",
        "reused" if result.reused else "registered",
        result.name,
        result.version,
        ", ".join(result.aliases),
        time.perf_counter() - started,
    )
    return result


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One export at a time into ``folder`` (flock: released when its holder dies)."""
    with (folder / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _export_or_reuse(
    cfg: Config,
    pre: PreprocessOutputs,
    train_out: TrainOutputs,
    evaluate_dir: Path,
    folder: ModelFolder,
) -> tuple[ExportResult, dict[str, Any]]:
    name = cfg.mlflow.registered_model_name
    model_sha, settings = sha256_file(train_out.model), export_settings(cfg)
    evaluated = EvaluateOutputs(evaluate_dir)
    metrics = {**evaluated.read_metrics(), "per_class": evaluated.read_per_class()}
    metric_tags = {
        "test_accuracy": f"{metrics['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['macro_f1']:.4f}",
    }
    if metrics.get("leakfree_accuracy") is not None:
        metric_tags["test_leakfree_accuracy"] = f"{metrics['leakfree_accuracy']:.4f}"
    # Reopening the training run also ends it again when a killed export left it RUNNING.
    with tracking.open_run(
        cfg.mlflow.experiment_name, "export", run_id=train_out.read_run_id()
    ) as run_id:
        pause("opened")
        existing = registry.find_export(name, model_sha, settings)
        if existing is not None and registry.fetch_version(existing, folder.root):
            tracking.set_version_tags(
                name,
                existing.version,
                {k: v for k, v in metric_tags.items() if existing.tags.get(k) != v},
            )
            orphans.check("move aliases")
            aliases = _set_aliases(cfg, name, existing.version, existing.aliases)
            valid = registry.valid_formats(existing)
            invalid = {
                k.removeprefix("format."): v.removeprefix("invalid: ")
                for k, v in existing.tags.items()
                if k.startswith("format.") and v != "valid"
            }
            result = ExportResult(
                name, existing.version, aliases, existing.run_id or run_id, valid, invalid, True
            )
        else:
            result = _register(cfg, pre, train_out, folder, metric_tags, run_id)
        card.publish(cfg, name, result.version, pre, train_out, metrics, folder.parity)
        record = {
            "name": name,
            "version": result.version,
            "aliases": result.aliases,
            "run_id": result.run_id,
            "uri": f"models:/{name}/{result.version}",
            "formats": result.valid_formats,
            "invalid": result.invalid_formats,
            registry.MODEL_SHA_TAG: model_sha,
        }
        return result, record


def _register(
    cfg: Config,
    pre: PreprocessOutputs,
    train_out: TrainOutputs,
    folder: ModelFolder,
    metric_tags: dict[str, str],
    run_id: str,
) -> ExportResult:
    """Write and check every format in ``folder``, then register it as a new version."""
    from imgclf.model import inference_model

    started = time.perf_counter()
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
    reader = pre.reader()
    pool = reader.subset("test") if reader.counts["test"] else reader.subset("train")
    images = pool[: cfg.export.parity_samples]  # the first few rows only
    if not np.allclose(
        model.predict(images, verbose=0), trained.predict(images, verbose=0), atol=1e-5
    ):
        raise RuntimeError("inference model disagrees with the trained model")
    folder.root.mkdir()
    parity = export_and_check(
        model, list(cfg.export.formats), folder.root, images, cfg.export.parity_max_abs_diff
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
    hashes = manifest(folder.root, valid)
    folder.write_classes(classes)
    folder.write_input_spec(spec)
    folder.write_parity({p.format: asdict(p) for p in parity})
    folder.write_manifest(hashes)
    log.info(
        "export: %d formats written and checked in %.1f s (%s)",
        len(parity),
        time.perf_counter() - started,
        ", ".join(
            f"{p.format} {'ok' if p.valid else 'FAILED'} max|Δp|={p.max_abs_diff:.2g}"
            for p in parity
        ),
    )
    pause("exported")

    name = cfg.mlflow.registered_model_name
    height, width = (int(d) for d in model.input_shape[1:3])
    # Only tags a user filters on or a loader must trust: per-file hashes are in the manifest
    # (whose own hash is tagged), parity numbers in the card and the run, the run id is the
    # version's own field.
    version_tags = {
        **lineage_tags(),
        **metric_tags,
        registry.MODEL_SHA_TAG: sha256_file(train_out.model),
        registry.SETTINGS_TAG: export_settings(cfg),
        "classes": json.dumps(classes),
        "image_height": str(height),
        "image_width": str(width),
        "image_fit": spec["fit"],
        registry.FORMATS_TAG: ",".join(valid),
        **{
            f"format.{p.format}": "valid" if p.valid else f"invalid: {p.reason}"[:5000]
            for p in parity
        },
        registry.MANIFEST_SHA_TAG: sha256_file(folder.manifest),
    }
    # Files first, version second: the version is created only once every file it names is
    # stored, with all its tags in the same call.
    source = tracking.log_model_with_files(
        model,
        input_example=images[:1],
        metadata={
            "classes": classes,
            "image_height": height,
            "image_width": width,
            "image_fit": spec["fit"],
            "formats": valid,
        },
        files_dir=folder.root,
        metrics=_parity_metrics(parity),
    )
    orphans.check("register a model version")
    version = tracking.register_version(name, source, version_tags)
    pause("registered")
    try:
        aliases = _set_aliases(cfg, name, version, [])
    except BaseException:
        log.error("export: could not set aliases; deleting version %s again", version)
        tracking.delete_version(name, version)
        raise
    return ExportResult(name, version, aliases, run_id, valid, invalid)


def _parity_metrics(parity: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in parity:
        out[f"parity_{p.format}_valid"] = float(p.valid)
        out[f"parity_{p.format}_label_agreement"] = p.label_agreement
        if np.isfinite(p.max_abs_diff):
            out[f"parity_{p.format}_max_abs_diff"] = p.max_abs_diff
    return out


def _set_aliases(cfg: Config, name: str, version: str, held: list[str]) -> list[str]:
    return registry.point_export_aliases(
        name, version, held, cfg.export.challenger_alias, cfg.export.champion_alias
    )
