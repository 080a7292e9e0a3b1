"""One class per stage's output folder (``artifacts/<stage>/``, as dvc.yaml), and the
predictions' file format (the decoded images' shard format is :mod:`.shards`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.artifacts.layout import File, Outputs
from imgclf.artifacts.model_folder import FORMAT_FILES, ModelDescription, ModelFolder
from imgclf.artifacts.shard_writer import ShardWriter, write_subsets
from imgclf.artifacts.shards import MANIFEST, ShardReader
from imgclf.fileio import atomic_path, read_json, write_csv, write_json


class _Figures(Outputs):
    class_counts_png = File("class_counts.png")
    sample_grid_png = File("sample_grid.png")


class IngestOutputs(_Figures):
    STAGE = "ingest"
    index = File("index.csv")
    report = File("report.json")  # counts, rejected and ignored entries, duplicate summary
    leakage = File("leakage.json")
    card = File("dataset_card.md")
    image_sizes_png = File("image_sizes.png")
    mlflow_run = File("mlflow_run.json")

    INDEX_FIELDS = ("path", "class", "split", "sha256", "width", "height", "dhash", "group", "leak")

    @property
    def card_figures(self) -> list[Path]:
        """The figures the dataset card shows, in its order."""
        return [self.class_counts_png, self.sample_grid_png, self.image_sizes_png]

    def write_index(self, rows: list[dict]) -> None:
        write_csv(self.index, self.INDEX_FIELDS, ([r[k] for k in self.INDEX_FIELDS] for r in rows))

    def read_index(self) -> list[dict[str, str]]:
        with self.index.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def read_classes(self) -> list[str]:
        return list(read_json(self.report)["classes"])

    def write_run_id(self, run_id: str) -> None:
        write_json(self.mlflow_run, {"run_id": run_id})


class PreprocessOutputs(ModelDescription, _Figures):
    STAGE = "preprocess"
    shards = File("shards")  # the decoded images and labels per subset (artifacts/shards.py)
    split = File("split.csv")  # each file's subset, near-duplicate group and leak flag
    counts = File("counts.json")

    SPLIT_FIELDS = ("path", "class", "subset", "group", "leak")

    @property
    def manifest(self) -> Path:
        """The shard folder's manifest: counts, shape, classes, params and each file's sha256."""
        return self.shards / MANIFEST

    def shard_writer(
        self,
        *,
        image_shape: Sequence[int],
        counts: Mapping[str, int],
        classes: Sequence[str],
        params: Mapping[str, Any],
    ) -> ShardWriter:
        """A writer whose folder replaces :attr:`shards` when it closes cleanly."""
        return ShardWriter(
            self.shards, image_shape=image_shape, counts=counts, classes=classes, params=params
        )

    def write_arrays(
        self,
        subsets: Mapping[str, tuple[np.ndarray, np.ndarray]],
        classes: Sequence[str],
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Write in-memory ``{subset: (images, labels)}`` as the shards (small data: tests)."""
        write_subsets(self.shards, subsets, classes=classes, params=params or {})

    def reader(self) -> ShardReader:
        """The one reader of the decoded images: every consumer gets its rows from it."""
        return ShardReader(self.shards)

    def write_split(self, subsets: Mapping[str, list[dict[str, str]]]) -> None:
        """``subsets``' rows (ingest's index rows), subset by subset in tensor order."""
        rows = (
            [r["path"], r["class"], s, r["group"], r["leak"]]
            for s, rs in subsets.items()
            for r in rs
        )
        write_csv(self.split, self.SPLIT_FIELDS, rows)

    def read_split(self, subset: str) -> list[dict[str, str]]:
        """The split's rows of one subset (path, class, leak, ...), in tensor order."""
        with self.split.open(newline="", encoding="utf-8") as f:
            return [r for r in csv.DictReader(f) if r["subset"] == subset]

    def read_leak_flags(self, n_test: int) -> np.ndarray:
        """Boolean flags, in test-tensor order: the test file has a twin in training."""
        rows = self.read_split("test")
        if len(rows) != n_test or "leak" not in (rows[0] if rows else {"leak": 0}):
            raise ValueError(f"{self.split}: does not match the test tensors; rerun preprocess")
        return np.array([r["leak"] == "1" for r in rows], dtype=bool)

    def write_counts(self, per_subset: dict[str, dict[str, int]]) -> None:
        write_json(self.counts, per_subset)


class TrainOutputs(Outputs):
    STAGE = "train"
    model = File(FORMAT_FILES["keras"])  # the kept epoch's weights
    history = File("history.csv")  # per-epoch metrics, a dvc plots source
    summary = File("train.json")  # kept epoch and its metrics, a DVC metric
    run = File("run.json")  # the MLflow run that evaluate and export report to

    def save_model(self, model: Any) -> None:
        with atomic_path(self.model) as tmp:
            model.save(tmp)

    def load_model(self) -> Any:
        import keras

        return keras.models.load_model(self.model, safe_mode=True)

    HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

    def write_history(self, history: dict[str, list[float]]) -> None:
        """Per-epoch metrics as CSV (epoch numbers from 1).

        The columns are always the same four, so ``dvc plots`` and ``dvc exp show`` compare a
        refit (no validation: its val cells are empty) with a validated run.
        """
        keys = self.HISTORY_KEYS
        rows = (
            [i + 1, *(f"{history[k][i]:.6f}" if k in history else "" for k in keys)]
            for i in range(len(history["loss"]))
        )
        write_csv(self.history, ("epoch", *keys), rows)

    def read_history(self) -> dict[str, list[float]]:
        """The history back as lists per metric (empty columns dropped)."""
        with self.history.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
        return {k: [float(r[k]) for r in rows] for k in keys if all(r[k] for r in rows)}

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary, summary)

    def write_run(self, run_id: str, experiment: str) -> None:
        write_json(self.run, {"run_id": run_id, "experiment": experiment})

    def read_run_id(self) -> str:
        return str(read_json(self.run)["run_id"])


class EvaluateOutputs(Outputs):
    STAGE = "evaluate"
    metrics = File("metrics.json")  # the headline scalars: a DVC metric, kept narrow
    per_class = File("per_class.json")  # precision/recall/F1/support per class: a plain out
    confusion = File("confusion.json")  # both confusion matrices, rows true
    predictions = File("predictions.csv")  # dvc plots confusion sources
    predictions_leakfree = File("predictions_leakfree.csv")
    confusion_png = File("confusion_matrix.png")
    confusion_leakfree_png = File("confusion_matrix_leakfree.png")
    learning_curves_png = File("learning_curves.png")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics, metrics)

    def read_metrics(self) -> dict[str, Any]:
        return dict(read_json(self.metrics))

    def write_per_class(self, per_class: dict[str, dict[str, float]]) -> None:
        write_json(self.per_class, per_class)

    def read_per_class(self) -> dict[str, dict[str, float]]:
        return dict(read_json(self.per_class))

    def write_confusion(self, classes: list[str], matrices: dict[str, Any]) -> None:
        write_json(self.confusion, {"classes": classes, **matrices})

    @property
    def files(self) -> list[Path]:
        """Every output, in the order they are logged to MLflow."""
        return [getattr(self, k) for k in self.names()]


def write_predictions(
    path: Path, classes: list[str], y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray
) -> None:
    """One row per test image: actual and predicted class, the predicted class's probability."""
    rows = zip(y_true, y_pred, probs, strict=True)
    write_csv(
        path,
        ("actual", "predicted", "probability"),
        ([classes[t], classes[p], f"{pr:.4f}"] for t, p, pr in rows),
    )


class ExportOutputs(Outputs):
    STAGE = "export"
    formats = File("formats")  # a ModelFolder, the very folder the registered version stores
    registered = File("registered.json")  # name, version, aliases, uri, formats
    parity = File(ModelFolder.parity.name)  # the model folder's, again, committed to git

    @property
    def model(self) -> ModelFolder:
        return ModelFolder(self.formats)

    def write_registered(self, record: dict[str, Any]) -> None:
        write_json(self.registered, record)


class CVOutputs(Outputs):
    """A cross-validated job's files, logged to its MLflow run under ``cv/``."""

    STAGE = "cv"
    predictions = File("predictions.csv")  # every pooled file's out-of-fold prediction
    confusion_png = File("confusion_matrix.png")

    def write_predictions(self, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
        write_csv(self.predictions, header, rows)
