"""evaluate: score the trained model on the test set and report to the training run.

The test set may share images with training (see ingest's leakage report), so accuracy is also
reported on the leak-free subset: test files with no exact or near twin in Training_data
(``leak == 0`` in preprocess's ``split.csv``). Both come with a 95 % Wilson interval.

Outputs (``out_dir``): ``metrics.json`` (``accuracy``, ``macro_f1``, ``leakfree_accuracy``,
``leakfree_macro_f1``, ``n_test``, ``n_leakfree``, ``n_leaky``, ``*_ci95_low/high``, per-class
precision/recall/F1, for ``dvc metrics show``), ``confusion.json`` (both confusion matrices,
rows true, columns predicted), ``predictions.csv`` and
``predictions_leakfree.csv`` (``dvc plots`` confusion sources), ``confusion_matrix.png``,
``confusion_matrix_leakfree.png`` and ``learning_curves.png``; the same figures and metrics go
to the MLflow run that train created.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf import plots, tracking
from imgclf.artifacts import load_dataset, read_history, read_leak_flags
from imgclf.config import Config
from imgclf.fileio import read_json, write_json, write_text
from imgclf.lineage import lineage_tags
from imgclf.metrics import compute_metrics, leakage_metrics

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    accuracy: float
    macro_f1: float
    n_test: int
    metrics_path: Path
    leakfree_accuracy: float | None = None
    n_leakfree: int = 0


def _write_predictions(
    path: Path, classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted", "probability"])
    for t, p, pr in zip(y_true, y_pred, probs, strict=True):
        writer.writerow([classes[t], classes[p], f"{pr:.4f}"])
    write_text(path, buf.getvalue())


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
    leak = read_leak_flags(preprocess_dir / "split.csv", len(y_test))
    metrics |= leakage_metrics(y_test, y_pred, leak, classes)
    free = ~leak
    # Matrices are not scalars: keep them out of metrics.json so `dvc metrics show` stays flat.
    confusion = {k: metrics.pop(k) for k in ("confusion_matrix", "confusion_matrix_leakfree")}

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    write_json(metrics_path, metrics)
    write_json(out_dir / "confusion.json", {"classes": classes, **confusion})
    top = probs.max(axis=1)
    _write_predictions(out_dir / "predictions.csv", classes, y_test, y_pred, top)
    _write_predictions(
        out_dir / "predictions_leakfree.csv", classes, y_test[free], y_pred[free], top[free]
    )
    lf = metrics["leakfree_accuracy"]
    for name, key, title in (
        (
            "confusion_matrix.png",
            "confusion_matrix",
            f"Test set (n={len(y_test)}), accuracy {metrics['accuracy']:.3f}",
        ),
        (
            "confusion_matrix_leakfree.png",
            "confusion_matrix_leakfree",
            f"Leak-free test (n={int(free.sum())}), accuracy "
            + ("n/a" if lf is None else f"{lf:.3f}"),
        ),
    ):
        cm = np.array(confusion[key], dtype=np.int64)
        shown = cm.astype(np.float64) / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        plots.confusion_matrix(
            shown if cfg.evaluate.normalize_confusion else cm, classes, out_dir / name, title
        )
    plots.learning_curves(read_history(train_dir / "history.csv"), out_dir / "learning_curves.png")

    run_info = read_json(train_dir / "run.json")
    flat = {
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_n": metrics["n_test"],
        "test_n_leakfree": metrics["n_leakfree"],
        "test_accuracy_ci95_low": metrics["accuracy_ci95_low"],
        "test_accuracy_ci95_high": metrics["accuracy_ci95_high"],
        "test_leakfree_accuracy_ci95_low": metrics["leakfree_accuracy_ci95_low"],
        "test_leakfree_accuracy_ci95_high": metrics["leakfree_accuracy_ci95_high"],
    }
    if lf is not None:
        flat |= {
            "test_leakfree_accuracy": lf,
            "test_leakfree_macro_f1": metrics["leakfree_macro_f1"],
        }
    for cls, m in metrics["per_class"].items():
        flat |= {
            f"test_{cls}_precision": m["precision"],
            f"test_{cls}_recall": m["recall"],
            f"test_{cls}_f1": m["f1"],
        }
    with tracking.reopen_run(run_info["run_id"], cfg.mlflow.experiment_name, lineage_tags()):
        tracking.log_metrics(flat)
        for name in (
            "metrics.json",
            "confusion.json",
            "predictions.csv",
            "predictions_leakfree.csv",
            "confusion_matrix.png",
            "confusion_matrix_leakfree.png",
            "learning_curves.png",
        ):
            tracking.log_artifact(out_dir / name, "evaluate")
    log.info(
        "evaluate: accuracy %.4f, macro F1 %.4f on %d test images; leak-free accuracy %s on %d",
        metrics["accuracy"],
        metrics["macro_f1"],
        len(y_test),
        "n/a" if lf is None else f"{lf:.4f}",
        int(free.sum()),
    )
    return EvaluateResult(
        metrics["accuracy"], metrics["macro_f1"], len(y_test), metrics_path, lf, int(free.sum())
    )
