"""Grouped k-fold cross-validation: folds that keep near-duplicate groups whole, and their summary.

The pool is the preprocess stage's rows (Training_data, or every labelled file with
``cv.pool=all``). Near-duplicate groups are ingest's leakage rule applied across the whole pool:
two files are one group when their difference hashes are within ``data.near_dup_distance`` or
their bytes are identical, transitively, under ingest's cap of ``data.max_group_fraction`` of
the pool per group (:mod:`imgclf.data.groups`; exact copies are never cut apart). A group never
straddles a fold boundary, so every file is predicted once, by a model that saw neither it nor
any of its twins (a pair cut by the cap, logged as a warning, is the exception).

:func:`summarize` turns the out-of-fold predictions into, per metric, the mean over folds, their
standard deviation and a 95 % interval of that mean from a group bootstrap: each replicate
resamples every fold's groups with replacement (twins move together, since they are not
independent evidence) and recomputes the fold means. With ``cv.repeats`` the same folds are
trained again under other training seeds; the score is then the mean over those repeats, and
each replicate also resamples the repeats, so the interval covers the seed as well as the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.artifacts import IngestOutputs, PreprocessOutputs, Rows
from imgclf.data.groups import capped_groups, max_group_size
from imgclf.data.neardup import content_ids, hex_hashes, near_pairs
from imgclf.errors import MissingInputError

SUBSETS = {"train": ("train", "val"), "all": ("train", "val", "test")}
BOOTSTRAP_REPLICATES = 2000


@dataclass(frozen=True)
class Pool:
    """Every file cross-validation draws from, in shard order: rows to read, not images."""

    rows: Rows  # the pooled subsets' rows, one after the other (read on demand)
    y: np.ndarray
    groups: np.ndarray  # near-duplicate group id per file, across the whole pool
    paths: list[str]


def load_pool(
    preprocess: Path, pool: str, near_dup_distance: int, max_group_fraction: float
) -> Pool:
    """The pooled rows of ``preprocess`` (no image read) and their groups (from ingest's index
    beside it).

    Raises:
        MissingInputError: the preprocess or ingest outputs are missing.
    """
    pre = PreprocessOutputs(preprocess)
    ingest = IngestOutputs(preprocess.parent / IngestOutputs.STAGE)
    for need in (pre.manifest, pre.split, ingest.index):
        if not need.is_file():
            raise MissingInputError(
                f"{need} not found: cross-validation pools the ingest and preprocess stages' "
                "outputs; run `dvc pull data.dvc && dvc repro preprocess` first"
            )
    pooled = pre.reader().pool(SUBSETS[pool])
    subsets = SUBSETS[pool]
    rows = [r for s in subsets for r in pre.read_split(s)]
    by_path = {r["path"]: r for r in ingest.read_index()}
    paths = [r["path"] for r in rows]
    pairs = near_pairs(
        hex_hashes([by_path[p]["dhash"] for p in paths]),
        near_dup_distance,
        content_ids([by_path[p]["sha256"] for p in paths]),
    )
    cap = max_group_size(len(rows), max_group_fraction)
    return Pool(
        rows=pooled,
        y=pooled.labels,
        groups=capped_groups(len(rows), pairs, cap, paths).labels(),
        paths=paths,
    )


def connected_groups(near: np.ndarray) -> np.ndarray:
    """Group ids of the connected components of a boolean adjacency matrix (a small one:
    :func:`load_pool` groups from the near pairs, never from an n x n matrix)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(csr_matrix(near), directed=False)
    return np.asarray(labels, dtype=np.int64)


def grouped_folds(
    y: np.ndarray, groups: np.ndarray, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (training, held-out) index pairs, stratified by class, groups kept whole."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros((len(y), 1)), y, groups)]


def fold_rows(
    pool: Pool, fold: tuple[np.ndarray, np.ndarray], *, refit: bool, val_fraction: float, seed: int
) -> dict[str, Rows]:
    """The recipe's view of one fold, shaped like the preprocess stage's subsets: index sets
    into the pool (``train``, ``val``, ``test``), no image copied.

    The fold's training part is what the recipe trains on. With ``refit`` it trains on all of it
    for every epoch; without, a grouped inner validation split (``val_fraction`` of it, as
    preprocess makes one) drives early stopping. The held-out part is ``test``: no choice is
    ever made on it.
    """
    train, held = fold
    if refit:
        fit_idx, val_idx = train, train[:0]
    else:
        k = max(2, round(1 / val_fraction))
        inner_fit, inner_val = grouped_folds(pool.y[train], pool.groups[train], k, seed)[0]
        fit_idx, val_idx = train[inner_fit], train[inner_val]
    return {
        "train": pool.rows.take(fit_idx),
        "val": pool.rows.take(val_idx),
        "test": pool.rows.take(held),
    }


# --- the summary ------------------------------------------------------------------------------


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: actual class, columns: predicted class."""
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def scores(cm: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro F1 and per-class precision, recall and F1 of one confusion matrix."""
    return dict(zip(score_names(classes), map(float, score_array(cm)), strict=True))


def score_names(classes: Sequence[str]) -> list[str]:
    """The names of :func:`score_array`'s columns."""
    per_class = [f"{m}_{name}" for name in classes for m in ("precision", "recall", "f1")]
    return ["accuracy", "macro_f1", *per_class]


def score_array(cm: np.ndarray) -> np.ndarray:
    """:func:`scores` of a stack of confusion matrices (``... x n x n``), as ``... x metrics``
    (the columns :func:`score_names`): the bootstrap scores thousands at once."""
    cm = np.asarray(cm, dtype=float)
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(diag / cm.sum(axis=-2))
        recall = np.nan_to_num(diag / cm.sum(axis=-1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    accuracy = diag.sum(axis=-1) / np.maximum(cm.sum(axis=(-2, -1)), 1)
    per_class = np.stack([precision, recall, f1], axis=-1).reshape(*cm.shape[:-2], -1)
    return np.concatenate([accuracy[..., None], f1.mean(axis=-1)[..., None], per_class], -1)


def summarize(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    fold_of: np.ndarray,
    groups: np.ndarray,
    classes: Sequence[str],
    *,
    repeat_of: np.ndarray | None = None,
    seed: int = 0,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> dict[str, float]:
    """``cv_<metric>`` (mean over folds), ``_std`` (their spread), ``_ci95_low``/``_high``.

    Args:
        y_true / y_pred: every pooled file's class and out-of-fold prediction, once per repeat.
        fold_of: the fold that held each row's file out.
        groups: each row's near-duplicate group (the bootstrap's unit).
        repeat_of: which repeat (training seed) predicted each row; None: one repeat. With
            several, ``cv_<metric>`` is the mean over repeats of the fold means, ``_std`` the
            spread of the folds' repeat-averaged scores, ``_seed_std`` the spread of the repeats'
            scores, and the interval resamples the repeats too.
    """
    n_classes = len(classes)
    if repeat_of is None:
        repeat_of = np.zeros(len(y_true), dtype=np.int64)
    folds, repeats = np.unique(fold_of), np.unique(repeat_of)
    counts = _group_counts(y_true, y_pred, fold_of, groups, repeat_of, n_classes)
    # Each (repeat, fold) cell's confusion matrix is its groups' counts summed.
    cells = [
        [scores(c[r].sum(axis=0).reshape(n_classes, n_classes), classes) for c in counts]
        for r in range(len(repeats))
    ]
    names = list(cells[0][0])
    values = np.array([[[c[m] for m in names] for c in row] for row in cells])  # R x F x M
    per_fold, per_repeat = values.mean(axis=0), values.mean(axis=1)
    boot = _group_bootstrap(counts, classes, seed, replicates)
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    out: dict[str, float] = {
        "cv_folds": float(len(folds)),
        "cv_n": float((repeat_of == repeats[0]).sum()),
        "cv_repeats": float(len(repeats)),
    }
    for j, m in enumerate(names):
        out |= {
            f"cv_{m}": float(values[..., j].mean()),
            f"cv_{m}_std": float(per_fold[:, j].std(ddof=1)) if len(folds) > 1 else 0.0,
            f"cv_{m}_ci95_low": float(low[j]),
            f"cv_{m}_ci95_high": float(high[j]),
        }
        if len(repeats) > 1:
            out[f"cv_{m}_seed_std"] = float(per_repeat[:, j].std(ddof=1))
    return out


def _group_counts(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    fold_of: np.ndarray,
    groups: np.ndarray,
    repeat_of: np.ndarray,
    n: int,
) -> list[np.ndarray]:
    """Per fold, each repeat's confusion counts of each group (repeats x groups x n*n): what a
    replicate resamples. A fold holds the same groups in every repeat."""
    repeats = np.unique(repeat_of)
    out = []
    for f in np.unique(fold_of):
        ids = np.unique(groups[fold_of == f])
        counts = np.zeros((len(repeats), len(ids), n * n))
        for r, rep in enumerate(repeats):
            mask = (fold_of == f) & (repeat_of == rep)
            cell = (np.searchsorted(ids, groups[mask]), y_true[mask] * n + y_pred[mask])
            np.add.at(counts[r], cell, 1)
        out.append(counts)
    return out


def _group_bootstrap(
    per_fold: list[np.ndarray], classes: Sequence[str], seed: int, replicates: int
) -> np.ndarray:
    """Replicates x metrics: the mean over repeats of the fold means, after resampling each
    fold's groups (one draw for every repeat: they are the same files) and the repeats."""
    n, n_repeats = len(classes), len(per_fold[0])
    rng = np.random.default_rng(seed)
    cells = []  # replicates x (picked repeats x folds) x n*n
    for _ in range(replicates):
        draws = [rng.integers(0, counts.shape[1], counts.shape[1]) for counts in per_fold]
        # One repeat: no draw, so a single run's interval is what it always was.
        picked = rng.integers(0, n_repeats, n_repeats) if n_repeats > 1 else [0]
        cells.append(
            [
                counts[r, drawn].sum(axis=0)
                for r in picked
                for counts, drawn in zip(per_fold, draws, strict=True)
            ]
        )
    scored = score_array(np.array(cells).reshape(replicates, -1, n, n))
    return scored.mean(axis=1)
