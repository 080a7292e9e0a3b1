"""export: save the model as ``.h5`` and ``.keras`` and register a new version in MLflow.

The version carries signature, input example, the ``.h5`` file, the class names and the lineage
tags (git revision, data hash, DVC experiment, test metrics). Alias ``challenger`` moves to it;
``champion`` too when the registered model has none yet.

Outputs (``out_dir``): ``model.h5``, ``model.keras``, ``classes.json``, ``registered.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf import tracking
from imgclf.config import Config
from imgclf.fileio import atomic_path, read_json, write_json
from imgclf.lineage import lineage_tags
from imgclf.stages.preprocess import load_dataset

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    name: str
    version: str
    aliases: list[str]
    run_id: str


def run(
    cfg: Config, *, preprocess_dir: Path, train_dir: Path, evaluate_dir: Path, out_dir: Path
) -> ExportResult:
    """Export ``train_dir``'s model and register it under ``cfg.mlflow.registered_model_name``."""
    import keras

    from imgclf.model import inference_model

    trained = keras.models.load_model(train_dir / "model.keras", safe_mode=True)
    model = inference_model(trained)
    classes: list[str] = read_json(preprocess_dir / "classes.json")
    metrics = read_json(evaluate_dir / "metrics.json")
    arrays = load_dataset(preprocess_dir / "dataset.npz")
    example = arrays["x_test"][:1] if len(arrays["x_test"]) else arrays["x_train"][:1]

    if not np.allclose(model.predict(example, verbose=0), trained.predict(example, verbose=0),
                       atol=1e-5):
        raise RuntimeError("inference model disagrees with the trained model")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.h5") as tmp:
        model.save(tmp)
    with atomic_path(out_dir / "model.keras") as tmp:
        model.save(tmp)
    write_json(out_dir / "classes.json", classes)

    name = cfg.mlflow.registered_model_name
    height, width = (int(d) for d in model.input_shape[1:3])
    tags = lineage_tags()
    version_tags = {
        **tags,
        "test_accuracy": f"{metrics['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['macro_f1']:.4f}",
    }
    run_info = read_json(train_dir / "run.json")
    with tracking.reopen_run(run_info["run_id"], cfg.mlflow.experiment_name, tags) as run_id:
        version = tracking.log_and_register_keras_model(
            model,
            registered_model_name=name,
            input_example=example,
            metadata={"classes": classes, "image_height": height, "image_width": width},
            version_tags={**version_tags, "run_id": run_id},
        )
        aliases = tracking.set_aliases(
            name, version, challenger=cfg.export.challenger_alias,
            champion=cfg.export.champion_alias,
        )
    write_json(out_dir / "registered.json",
               {"name": name, "version": version, "aliases": aliases, "run_id": run_id,
                "uri": f"models:/{name}/{version}"})
    log.info("export: registered %s version %s (aliases: %s)", name, version, ", ".join(aliases))
    return ExportResult(name, version, aliases, run_id)
