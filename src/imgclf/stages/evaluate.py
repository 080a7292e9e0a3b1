"""evaluate: score the trained model on the test set and report to the training run.

The test set may share images with training (see ingest's leakage report), so accuracy is also
reported on the leak-free subset: test files with no exact or near twin in Training_data
(``leak == 0`` in preprocess's split). Both come with a 95 % Wilson interval.

Outputs: :class:`imgclf.artifacts.EvaluateOutputs` (the headline scalars for ``dvc metrics
show``: ``accuracy``, ``macro_f1``, ``leakfree_accuracy``, ``leakfree_macro_f1``, ``n_test``,
``n_leakfree``, ``n_leaky``, ``*_ci95_low/high``, ``host_cpu``; the per-class
precision/recall/F1 in a file of their own, so the metrics table stays one screen wide; both
confusion matrices, rows true and columns predicted; the predictions of the whole and of the
leak-free test set as ``dvc plots`` confusion sources; and the figures). The metrics go to
the MLflow run that train created, the data files under its ``evaluate/`` folder, and the
figures (plus a gallery of the misclassified test images) at the run's top level: MLflow's
compare view shows the top-level files two runs share side by side.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf import plots, tracking
from imgclf.artifacts import EvaluateOutputs, PreprocessOutputs, TrainOutputs, write_predictions
from imgclf.config import Config
from imgclf.host import host_cpu
from imgclf.metrics import score, tracked_metrics

log = logging.getLogger(__name__)

MISCLASSIFIED_PNG = "misclassified.png"


@dataclass
class EvaluateResult:
    accuracy: float
    macro_f1: float
    n_test: int
    metrics_path: Path
    leakfree_accuracy: float | None = None
    n_leakfree: int = 0


def run(cfg: Config, *, preprocess_dir: Path, train_dir: Path, out_dir: Path) -> EvaluateResult:
    """Evaluate ``train_dir``'s model on ``preprocess_dir``'s test rows, read batch by batch."""
    pre, trained = PreprocessOutputs(preprocess_dir), TrainOutputs(train_dir)
    out = EvaluateOutputs(out_dir)
    test = pre.reader().subset("test")
    classes = pre.read_classes()
    y_test = test.labels
    if len(y_test) == 0:
        raise ValueError(f"{preprocess_dir}: the test set is empty")
    model = trained.load_model()
    # Keras takes a generator of (inputs,) tuples: the same batches model.predict(x) makes.
    probs = model.predict(((b,) for b in test.batches(cfg.evaluate.batch_size)), verbose=0)
    y_pred = probs.argmax(axis=1)
    leak = pre.read_leak_flags(len(y_test))
    metrics = score(y_test, y_pred, leak, classes)
    free = ~leak
    # Only the headline scalars go to the metrics file: `dvc metrics show` and `dvc exp show`
    # print one column per key, so matrices and per-class scores get files of their own.
    confusion = {k: metrics.pop(k) for k in ("confusion_matrix", "confusion_matrix_leakfree")}
    headline = {k: v for k, v in metrics.items() if k != "per_class"}

    out_dir.mkdir(parents=True, exist_ok=True)
    out.write_metrics({**headline, "host_cpu": host_cpu()})  # the numbers depend on the CPU
    out.write_per_class(metrics["per_class"])
    out.write_confusion(classes, confusion)
    top = probs.max(axis=1)
    write_predictions(out.predictions, classes, y_test, y_pred, top)
    write_predictions(out.predictions_leakfree, classes, y_test[free], y_pred[free], top[free])
    lf = metrics["leakfree_accuracy"]
    for path, key, title in (
        (
            out.confusion_png,
            "confusion_matrix",
            f"Test set (n={len(y_test)}), accuracy {metrics['accuracy']:.3f}",
        ),
        (
            out.confusion_leakfree_png,
            "confusion_matrix_leakfree",
            f"Leak-free test (n={int(free.sum())}), accuracy "
            + ("n/a" if lf is None else f"{lf:.3f}"),
        ),
    ):
        cm = np.array(confusion[key], dtype=np.int64)
        shown = cm.astype(np.float64) / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        plots.confusion_matrix(
            shown if cfg.evaluate.normalize_confusion else cm, classes, path, title
        )
    plots.learning_curves(trained.read_history(), out.learning_curves_png)

    with tracking.open_run(cfg.mlflow.experiment_name, "evaluate", run_id=trained.read_run_id()):
        tracking.log_metrics(tracked_metrics(metrics))
        figures = {out.confusion_png, out.confusion_leakfree_png, out.learning_curves_png}
        for path in out.files:
            tracking.log_artifact(path, None if path in figures else "evaluate")
        with tempfile.TemporaryDirectory() as tmp:  # MLflow only: no DVC output to keep
            gallery = Path(tmp) / MISCLASSIFIED_PNG
            plots.misclassified(test, y_test, y_pred, top, classes, gallery)
            tracking.log_artifact(gallery, None)
    log.info(
        "evaluate: accuracy %.4f, macro F1 %.4f on %d test images; leak-free accuracy %s on %d",
        metrics["accuracy"],
        metrics["macro_f1"],
        len(y_test),
        "n/a" if lf is None else f"{lf:.4f}",
        int(free.sum()),
    )
    return EvaluateResult(
        metrics["accuracy"], metrics["macro_f1"], len(y_test), out.metrics, lf, int(free.sum())
    )
