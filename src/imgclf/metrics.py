"""Classification metrics that evaluate and promote share: accuracy, macro F1, per-class
scores, the leak-free subset, and Wilson intervals; and their names in MLflow."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % for the default ``z``)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


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


def score(
    y_true: np.ndarray, y_pred: np.ndarray, leak: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Every test metric: :func:`compute_metrics` and :func:`leakage_metrics` together."""
    return compute_metrics(y_true, y_pred, classes) | leakage_metrics(y_true, y_pred, leak, classes)


def tracked_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """:func:`score`'s scalars as the training run logs them (``test_`` prefix, per class)."""
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
    if metrics["leakfree_accuracy"] is not None:
        flat |= {
            "test_leakfree_accuracy": metrics["leakfree_accuracy"],
            "test_leakfree_macro_f1": metrics["leakfree_macro_f1"],
        }
    for cls, m in metrics["per_class"].items():
        flat |= {
            f"test_{cls}_precision": m["precision"],
            f"test_{cls}_recall": m["recall"],
            f"test_{cls}_f1": m["f1"],
        }
    return flat
