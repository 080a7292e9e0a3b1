"""Figures for the dataset card and evaluation (matplotlib, headless, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from imgclf.fileio import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def class_counts(counts: Mapping[str, Mapping[str, int]], path: Path) -> None:
    """Grouped bar chart: images per class in each subset."""
    subsets = list(counts)
    classes = sorted({c for per in counts.values() for c in per})
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(subsets))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, subset in enumerate(subsets):
        values = [counts[subset].get(c, 0) for c in classes]
        bars = ax.bar(x + i * width, values, width, label=subset)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x + width * (len(subsets) - 1) / 2, classes)
    ax.set_ylabel("images")
    ax.set_title("Images per class and subset")
    ax.legend()
    _save(fig, path)


def sample_grid(
    images: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    path: Path,
    per_class: int = 6,
) -> None:
    """A grid with ``per_class`` sample images for each class (one row per class)."""
    fig, axes = plt.subplots(
        len(classes), per_class, figsize=(per_class * 2.0, len(classes) * 1.6), squeeze=False
    )
    labels_arr = np.asarray(labels)
    for r, cls in enumerate(classes):
        idx = np.flatnonzero(labels_arr == r)[:per_class]
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(images[idx[c]])
            if c == 0:
                ax.set_title(cls, fontsize=9, loc="left")
    fig.suptitle("Sample images (after resizing)")
    _save(fig, path)


def confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Confusion matrix heat map with counts (rows: true, columns: predicted)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            value = cm[i, j]
            text = f"{value:.2f}" if np.issubdtype(cm.dtype, np.floating) else str(value)
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if value > threshold else "black",
            )
    ax.set_title(title)
    _save(fig, path)


def learning_curves(history: Mapping[str, Sequence[float]], path: Path) -> None:
    """Loss and accuracy per epoch, training vs validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for name in (key, f"val_{key}"):
            if name in history:
                ax.plot(epochs, history[name], marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def image_sizes(sizes: Mapping[str, Sequence[tuple[int, int]]], path: Path) -> None:
    """Scatter of original image width vs height, one colour per split."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for split, wh in sizes.items():
        if wh:
            arr = np.asarray(wh)
            ax.scatter(arr[:, 0], arr[:, 1], s=10, alpha=0.6, label=f"{split} (n={len(arr)})")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("Original image sizes")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def misclassified(
    images: Any,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    classes: Sequence[str],
    path: Path,
    limit: int = 24,
) -> None:
    """The test images the model got wrong (most confident mistakes first), or a note if none.

    ``images`` is indexed by row (an array, or the reader's rows: only the shown ones are read).
    """
    wrong = [int(i) for i in np.flatnonzero(y_true != y_pred)]
    wrong.sort(key=lambda i: -float(confidence[i]))
    wrong = wrong[:limit]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 1.9), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(wrong):
            i = wrong[k]
            ax.imshow(images[i])
            ax.set_title(
                f"{classes[y_true[i]]}\n-> {classes[y_pred[i]]} {confidence[i]:.2f}", fontsize=7
            )
    if not wrong:
        axes[0][0].text(0, 0.5, "no misclassified test image", fontsize=11)
    fig.suptitle(f"Misclassified test images: {len(wrong)} shown (true -> predicted, confidence)")
    _save(fig, path)
