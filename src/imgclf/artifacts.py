"""Every stage output: its file name, and its typed read and write, in one place.

Stages, sweeps, promote and the benchmark read each other's outputs only through here, so a
file name such as ``dataset.npz`` appears once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from imgclf.fileio import atomic_path, write_text


def save_dataset(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the cached tensors atomically (uncompressed: loading is a memcpy)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def load_dataset(path: Path) -> dict[str, np.ndarray]:
    """Load the cached tensors written by :func:`save_dataset`."""
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


INDEX_FIELDS = ("path", "class", "split", "sha256", "width", "height", "dhash", "group", "leak")


def write_index(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in INDEX_FIELDS} for r in rows)
    write_text(path, buf.getvalue())


def read_index(index_path: Path) -> list[dict[str, str]]:
    """Read the index written by :func:`run`."""
    with index_path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Per-epoch metrics as CSV (epoch numbers from 1).

    The columns are always the same four, so ``dvc plots`` and ``dvc exp show`` compare a refit
    (no validation: its val cells are empty) with a validated run.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *HISTORY_KEYS])
    for i in range(len(history["loss"])):
        cells = (f"{history[k][i]:.6f}" if k in history else "" for k in HISTORY_KEYS)
        writer.writerow([i + 1, *cells])
    write_text(path, buf.getvalue())


def read_history(path: Path) -> dict[str, list[float]]:
    """Read :func:`write_history`'s CSV back into lists per metric (empty columns dropped)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in rows] for k in keys if all(r[k] for r in rows)}


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
