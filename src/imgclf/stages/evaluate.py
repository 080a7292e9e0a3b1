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
import math
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
    leakfree_accuracy: float | None = None
    n_leakfree: int = 0


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % for the default ``z``)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def read_test_rows(split_csv: Path) -> list[dict[str, str]]:
    """``split_csv``'s test rows (path, class, leak, ...), in test-tensor order."""
    with split_csv.open(newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["subset"] == "test"]


def read_leak_flags(split_csv: Path, n_test: int) -> np.ndarray:
    """Boolean flags, in test-tensor order: the test file has a twin in training."""
    rows = read_test_rows(split_csv)
    if len(rows) != n_test or "leak" not in (rows[0] if rows else {"leak": 0}):
        raise ValueError(f"{split_csv}: does not match the test tensors; rerun preprocess")
    return np.array([r["leak"] == "1" for r in rows], dtype=bool)


def leakage_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, leak: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy on the whole test set and on its leak-free part, with Wilson intervals."""
    labels = list(range(len(classes)))
    ok = y_true == y_pred
    free = ~leak
    out: dict[str, Any] = {"n_leakfree": int(free.sum()), "n_leaky": int(leak.sum())}
    out["accuracy_ci95_low"], out["accuracy_ci95_high"] = wilson_interval(int(ok.sum()), len(ok))
    if free.any():
        out["leakfree_accuracy"] = float(ok[free].mean())
        _, _, f1, _ = precision_recall_fscore_support(
            y_true[free], y_pred[free], labels=labels, zero_division=0
        )
        out["leakfree_macro_f1"] = float(np.mean(f1))
    else:  # JSON null: dvc metrics show prints "-" rather than a made-up number
        out["leakfree_accuracy"] = out["leakfree_macro_f1"] = None
    lo, hi = wilson_interval(int(ok[free].sum()), int(free.sum()))
    out["leakfree_accuracy_ci95_low"], out["leakfree_accuracy_ci95_high"] = lo, hi
    out["leaky_accuracy"] = float(ok[leak].mean()) if leak.any() else None
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    out["confusion_matrix_leakfree"] = (
        confusion_matrix(y_true[free], y_pred[free], labels=labels).tolist()
        if free.any()
        else [[0] * len(labels) for _ in labels]
    )
    return out


def _write_predictions(
    path: Path, classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted", "probability"])
    for t, p, pr in zip(y_true, y_pred, probs, strict=True):
        writer.writerow([classes[t], classes[p], f"{pr:.4f}"])
    write_text(path, buf.getvalue())


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
            cls: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
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
