"""Exact and near duplicates, label conflicts and train/test leakage.

Exact duplicates share a sha256. Near duplicates have a difference hash (dHash: 9x8 grayscale
thumbnail, one bit per horizontal gradient) within a configurable Hamming distance. The
thumbnail is an area average (Pillow's BOX filter, like OpenCV's INTER_AREA): on id-cards it
reproduces the measurement in DATA.md (91 leaky test files at distance <= 3), where imagehash's
Lanczos thumbnail finds 94. All pairwise distances are one vectorised numpy XOR + popcount,
so a few thousand files take milliseconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

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
    """All pairwise Hamming distances between hex hashes (uint8 matrix)."""
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


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _groups(n: int, pairs: np.ndarray) -> list[int]:
    """Connected components over ``pairs`` (k x 2 indices); the id is the smallest member."""
    uf = _UnionFind(n)
    for a, b in pairs:
        uf.union(int(a), int(b))
    return [uf.find(i) for i in range(n)]


def find_duplicates(
    items: Sequence[Item], max_distance: int, train_split: str | None, test_split: str | None
) -> dict[str, Any]:
    """Find exact and near duplicates within and across splits and classes.

    Args:
        max_distance: largest dHash Hamming distance that counts as a near duplicate
            (exact duplicates always count, whatever their distance).
        train_split / test_split: split names; ``None`` when the dataset has one split only.

    Returns:
        A JSON-ready report: ``summary`` (counts), ``exact_groups``, ``label_conflicts``,
        ``leakage`` (each test file with its training twins and distances), plus per-file
        ``group`` (near-duplicate group within the file's split) and ``leak`` (has a twin in
        the other split) lists aligned with ``items``.
    """
    n = len(items)
    dist = hamming_matrix([it.dhash for it in items])
    sha = np.array([it.sha256 for it in items])
    exact = sha[:, None] == sha[None, :] if n else np.zeros((0, 0), bool)
    near = (dist <= max_distance) | exact
    np.fill_diagonal(near, False)
    split = np.array([it.split for it in items])
    same_split = split[:, None] == split[None, :] if n else np.zeros((0, 0), bool)

    iu = np.argwhere(np.triu(near, k=1))
    within = iu[same_split[iu[:, 0], iu[:, 1]]] if len(iu) else iu
    group = _groups(n, within)

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
    for a, b in iu:
        if items[a].cls != items[b].cls:
            label_conflicts.append(
                {
                    "a": items[a].path,
                    "a_class": items[a].cls,
                    "b": items[b].path,
                    "b_class": items[b].cls,
                    "distance": int(dist[a, b]),
                    "exact": bool(exact[a, b]),
                }
            )

    leak = [False] * n
    leakage: list[dict[str, Any]] = []
    if train_split is not None and test_split is not None:
        train_idx = [i for i in range(n) if items[i].split == train_split]
        for i in (i for i in range(n) if items[i].split == test_split):
            twins = [j for j in train_idx if near[i, j]]
            if not twins:
                continue
            leak[i] = True
            for j in twins:
                leak[j] = True
            twins.sort(key=lambda j: (int(dist[i, j]), items[j].path))
            leakage.append(
                {
                    "path": items[i].path,
                    "class": items[i].cls,
                    "exact": any(exact[i, j] for j in twins),
                    "min_distance": int(min(dist[i, j] for j in twins)),
                    "twins": [
                        {
                            "path": items[j].path,
                            "class": items[j].cls,
                            "distance": int(dist[i, j]),
                            "exact": bool(exact[i, j]),
                        }
                        for j in twins
                    ],
                }
            )
    n_test = sum(it.split == test_split for it in items) if test_split is not None else 0
    near_within = {
        s: int(sum(1 for a, b in within if items[a].split == s))
        for s in sorted({it.split for it in items})
    }
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
        "near_pairs": len(iu),
        "near_pairs_within_split": near_within,
        "near_groups_within_split": sum(1 for s in group_sizes.values() if s > 1),
        "files_in_near_groups": sum(s for s in group_sizes.values() if s > 1),
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
