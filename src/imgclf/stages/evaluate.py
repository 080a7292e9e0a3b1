"""evaluate: score the trained model on the test set and report to the training run.

Outputs (``out_dir``): ``metrics.json`` (``accuracy``, ``macro_f1``, per-class precision/recall/F1,
for ``dvc metrics show``), ``predictions.csv`` (``dvc plots`` confusion source),
``confusion_matrix.png`` and ``learning_curves.png``; the same figures and metrics go to the
MLflow run that train created.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from imgclf import plots, tracking
from imgclf.config import Config
from imgclf.fileio import read_json, write_json, write_text
from imgclf.lineage import lineage_tags
from imgclf.stages.preprocess import load_dataset
from imgclf.stages.train import read_history

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    accuracy: float
    macro_f1: float
    n_test: int
    metrics_path: Path


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class precision/recall/F1/support."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f1)),
        "n_test": int(len(y_true)),
        "per_class": {
            cls: {"precision": float(precision[i]), "recall": float(recall[i]),
                  "f1": float(f1[i]), "support": int(support[i])}
            for i, cls in enumerate(classes)
        },
    }


def run(cfg: Config, *, preprocess_dir: Path, train_dir: Path, out_dir: Path) -> EvaluateResult:
    """Evaluate ``train_dir``'s model on ``preprocess_dir``'s test tensors."""
    import keras

    arrays = load_dataset(preprocess_dir / "dataset.npz")
    classes: list[str] = read_json(preprocess_dir / "classes.json")
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if len(y_test) == 0:
        raise ValueError(f"{preprocess_dir}: the test set is empty")
    model = keras.models.load_model(train_dir / "model.keras", safe_mode=True)
    probs = model.predict(x_test, batch_size=cfg.evaluate.batch_size, verbose=0)
    y_pred = probs.argmax(axis=1)
    metrics = compute_metrics(y_test, y_pred, classes)
    cm = confusion_matrix(y_test, y_pred, labels=list(range(len(classes))))

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    write_json(metrics_path, metrics)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted", "probability"])
    for t, p, pr in zip(y_test, y_pred, probs.max(axis=1), strict=True):
        writer.writerow([classes[t], classes[p], f"{pr:.4f}"])
    write_text(out_dir / "predictions.csv", buf.getvalue())
    shown = cm.astype(np.float64) / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    plots.confusion_matrix(
        shown if cfg.evaluate.normalize_confusion else cm, classes,
        out_dir / "confusion_matrix.png",
        f"Test set (n={len(y_test)}), accuracy {metrics['accuracy']:.3f}",
    )
    plots.learning_curves(read_history(train_dir / "history.csv"), out_dir / "learning_curves.png")

    run_info = read_json(train_dir / "run.json")
    flat = {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]}
    for cls, m in metrics["per_class"].items():
        flat |= {f"test_{cls}_precision": m["precision"], f"test_{cls}_recall": m["recall"],
                 f"test_{cls}_f1": m["f1"]}
    with tracking.reopen_run(run_info["run_id"], cfg.mlflow.experiment_name, lineage_tags()):
        tracking.log_metrics(flat)
        for name in ("metrics.json", "predictions.csv", "confusion_matrix.png",
                     "learning_curves.png"):
            tracking.log_artifact(out_dir / name, "evaluate")
    log.info("evaluate: accuracy %.4f, macro F1 %.4f on %d test images", metrics["accuracy"],
             metrics["macro_f1"], len(y_test))
    return EvaluateResult(metrics["accuracy"], metrics["macro_f1"], len(y_test), metrics_path)

