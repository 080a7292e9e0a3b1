"""Exact and near duplicates, label conflicts and train/test leakage.

Exact duplicates share a sha256. Near duplicates have a difference hash (dHash: 9x8 grayscale
thumbnail, one bit per horizontal gradient) within a configurable Hamming distance. The
thumbnail is an area average (Pillow's BOX filter, like OpenCV's INTER_AREA): on id-cards it
reproduces the measurement in DATA.md (91 leaky test files at distance <= 3), where imagehash's
Lanczos thumbnail finds 94.

Everything here is computed from the list of near pairs, found without comparing every file
with every other: :mod:`imgclf.data.neardup` (multi-index hashing, exact, memory O(n + pairs)),
so a million files fit where an n x n distance matrix died between 20k and 30k. Leakage comes
from the train/test pairs; the per-file ``group`` (what preprocess keeps on one side of its
train/validation split) comes from the within-split pairs, grouped by
:mod:`imgclf.data.groups` under ``data.max_group_fraction``: a chain of look-alikes cannot grow
into one group holding most of the data, and the pairs refused to keep groups that small are
counted (``cut_pairs``) and logged, never dropped from the leakage report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.groups import capped_groups, max_group_size
from imgclf.data.neardup import content_ids, hex_hashes, near_pairs

HASH_SIZE = 8  # 8 rows x 9 columns -> 64 bits


def dhash(rgb: np.ndarray) -> str:
    """The 64-bit difference hash of an RGB image, as 16 hex digits."""
    gray = (
        Image.fromarray(rgb).convert("L").resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.BOX)
    )
    px = np.asarray(gray, dtype=np.int16)
    bits = px[:, 1:] > px[:, :-1]
    return np.packbits(bits.ravel()).tobytes().hex()


def hamming_matrix(hashes: Sequence[str]) -> np.ndarray:
    """All pairwise Hamming distances between a handful of hex hashes (uint8 matrix).

    For inspecting a few files (tests, a notebook): it grows as n², so nothing in the pipeline
    uses it; :func:`imgclf.data.neardup.near_pairs` finds the near pairs of a whole dataset.
    """
    if not hashes:
        return np.zeros((0, 0), np.uint8)
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    return np.bitwise_count(values[:, None] ^ values[None, :]).astype(np.uint8)


@dataclass(frozen=True)
class Item:
    """One accepted file as the duplicate finder sees it."""

    path: str
    cls: str
    split: str
    sha256: str
    dhash: str


def find_duplicates(
    items: Sequence[Item],
    max_distance: int,
    train_split: str | None,
    test_split: str | None,
    *,
    max_group_fraction: float = 1.0,
) -> dict[str, Any]:
    """Find exact and near duplicates within and across splits and classes.

    Args:
        max_distance: largest dHash Hamming distance that counts as a near duplicate
            (exact duplicates always count, whatever their distance).
        train_split / test_split: split names; ``None`` when the dataset has one split only.
        max_group_fraction: a near-duplicate group holds at most this fraction of the files
            (never under 50 files); the pairs refused to keep it so are counted as ``cut_pairs``
            (:mod:`imgclf.data.groups`). 1.0 never cuts.

    Returns:
        A JSON-ready report: ``summary`` (counts), ``exact_groups``, ``label_conflicts``,
        ``leakage`` (each test file with its training twins and distances), plus per-file
        ``group`` (near-duplicate group within the file's split) and ``leak`` (has a twin in
        the other split) lists aligned with ``items``.
    """
    n = len(items)
    pairs = near_pairs(
        hex_hashes([it.dhash for it in items]),
        max_distance,
        content_ids([it.sha256 for it in items]),
    )
    split_id = content_ids([it.split for it in items])
    same_split = split_id[pairs.i] == split_id[pairs.j]
    within = pairs.select(same_split)
    groups = capped_groups(
        n, within, max_group_size(n, max_group_fraction), [it.path for it in items]
    )
    group = groups.root.tolist()

    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_sha[it.sha256].append(i)
    exact_groups = []
    for digest, members in sorted(by_sha.items(), key=lambda kv: items[kv[1][0]].path):
        if len(members) < 2:
            continue
        exact_groups.append(
            {
                "sha256": digest,
                "files": [
                    {"path": items[i].path, "class": items[i].cls, "split": items[i].split}
                    for i in members
                ],
                "splits": sorted({items[i].split for i in members}),
                "classes": sorted({items[i].cls for i in members}),
            }
        )

    label_conflicts = []
    for a, b, d, ex in pairs.rows():
        if items[a].cls != items[b].cls:
            label_conflicts.append(
                {
                    "a": items[a].path,
                    "a_class": items[a].cls,
                    "b": items[b].path,
                    "b_class": items[b].cls,
                    "distance": d,
                    "exact": ex,
                }
            )

    leak = [False] * n
    leakage: list[dict[str, Any]] = []
    if train_split is not None and test_split is not None:
        # From the pairs themselves, never from groups: a pair the group cap cut still leaks.
        twins_of: dict[int, list[tuple[int, int, bool]]] = defaultdict(list)
        for a, b, d, ex in pairs.select(~same_split).rows():
            if items[a].split == train_split and items[b].split == test_split:
                twins_of[b].append((a, d, ex))
            elif items[a].split == test_split and items[b].split == train_split:
                twins_of[a].append((b, d, ex))
        for i in sorted(twins_of):
            twins = sorted(twins_of[i], key=lambda t: (t[1], items[t[0]].path))
            leak[i] = True
            for j, _, _ in twins:
                leak[j] = True
            leakage.append(
                {
                    "path": items[i].path,
                    "class": items[i].cls,
                    "exact": any(ex for _, _, ex in twins),
                    "min_distance": twins[0][1],
                    "twins": [
                        {
                            "path": items[j].path,
                            "class": items[j].cls,
                            "distance": d,
                            "exact": ex,
                        }
                        for j, d, ex in twins
                    ],
                }
            )
    n_test = sum(it.split == test_split for it in items) if test_split is not None else 0
    within_count = Counter(items[a].split for a in within.i.tolist())
    near_within = {s: within_count[s] for s in sorted({it.split for it in items})}
    group_sizes: dict[int, int] = defaultdict(int)
    for g in group:
        group_sizes[g] += 1
    summary = {
        "near_dup_distance": max_distance,
        "n_files": n,
        "distinct_sha256": len(by_sha),
        "exact_groups": len(exact_groups),
        "exact_groups_across_splits": sum(len(g["splits"]) > 1 for g in exact_groups),
        "exact_groups_within_split": sum(len(g["splits"]) == 1 for g in exact_groups),
        "near_pairs": len(pairs),
        "near_pairs_within_split": near_within,
        "near_groups_within_split": sum(1 for s in group_sizes.values() if s > 1),
        "files_in_near_groups": sum(s for s in group_sizes.values() if s > 1),
        "cut_pairs": groups.cut_pairs,
        "label_conflicts": len(label_conflicts),
        "n_test": n_test,
        "leaky_test_files": len(leakage),
        "leaky_test_files_exact": sum(1 for r in leakage if r["exact"]),
        "leakfree_test_files": n_test - len(leakage),
    }
    return {
        "summary": summary,
        "exact_groups": exact_groups,
        "label_conflicts": label_conflicts,
        "leakage": leakage,
        "group": group,
        "leak": leak,
    }
