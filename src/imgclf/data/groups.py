"""Near-duplicate groups that cannot swallow a dataset: connected components under a size cap.

A group is what a split keeps on one side. Plain connected components of the near pairs are
transitive: on skewed hashes (thousands of look-alike forms) chains of look-alikes join into one
giant component, and a grouped split then puts most of the data on one side, silently. So groups
are built Kruskal-style with a cap of ``max(MIN_GROUP_CAP, floor(max_group_fraction * n))`` files
(:func:`max_group_size`):

1. the pairs are taken in order exact copies first, then by increasing distance, ties by
   ``(i, j)``;
2. each pair joins its two groups unless the union would hold more than the cap files and the
   pair is not an exact copy (exact copies are never cut: identical bytes must stay together);
3. a refused pair is *cut*. Groups only grow, so a cut pair's files never end in one group.

Without cuts the groups are exactly the connected components. Components no larger than the cap
cannot be cut, so only the oversized ones go through the sequential Kruskal loop; the rest are
one vectorised ``connected_components``. Each component that loses pairs is logged in one
warning line. Cutting only decides which files a split keeps together: leakage is computed from
the pairs themselves, so a cut pair across a split boundary is still reported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgclf.data.neardup import NearPairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Groups:
    """Per-file group ids and per-pair cut flags."""

    root: np.ndarray  # int64 per file: the smallest index in its group
    cut: np.ndarray  # bool per pair: refused by the cap

    @property
    def cut_pairs(self) -> int:
        return int(self.cut.sum())

    def labels(self) -> np.ndarray:
        """Dense group ids ``0..k-1``, numbered in order of each group's smallest member."""
        return np.unique(self.root, return_inverse=True)[1].astype(np.int64)


# Groups up to this size are never cut, whatever the fraction: a family of up to 50 look-alikes
# is more likely real (one form photographed many times) than a chain through skewed hashes,
# and cannot unbalance a split by more than 50 files. So a small dataset keeps its plain
# connected components (the id-cards' largest group holds 7 files).
MIN_GROUP_CAP = 50


def max_group_size(n: int, max_group_fraction: float) -> int:
    """The cap: ``max(MIN_GROUP_CAP, floor(max_group_fraction * n))`` files."""
    return max(MIN_GROUP_CAP, math.floor(max_group_fraction * n))


def components(n: int, pairs: NearPairs) -> np.ndarray:
    """Connected components of ``pairs``: per file, the smallest index of its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return np.arange(n, dtype=np.int64)
    ones = np.ones(len(pairs), np.int8)
    graph = coo_matrix((ones, (pairs.i, pairs.j)), shape=(n, n)).tocsr()
    _, label = connected_components(graph, directed=False)
    _, smallest = np.unique(label, return_index=True)  # first occurrence = smallest index
    return smallest[label].astype(np.int64)


def capped_groups(
    n: int, pairs: NearPairs, max_size: int, names: Sequence[str] | None = None
) -> Groups:
    """Group ``n`` files by ``pairs`` under the cap ``max_size`` (the rule in the module doc).

    Args:
        names: the files' paths, for the warning lines (indices when ``None``).
    """
    root = components(n, pairs)
    cut = np.zeros(len(pairs), bool)
    sizes = np.bincount(root, minlength=n)
    if not len(pairs) or sizes.max() <= max_size:
        return Groups(root, cut)

    members = np.flatnonzero(sizes[root] > max_size)  # files of oversized components, sorted
    inside = np.flatnonzero(sizes[root[pairs.i]] > max_size)
    order = inside[
        np.lexsort((pairs.j[inside], pairs.i[inside], pairs.distance[inside], ~pairs.exact[inside]))
    ]
    local_i = np.searchsorted(members, pairs.i[order]).tolist()
    local_j = np.searchsorted(members, pairs.j[order]).tolist()
    parent = list(range(len(members)))  # local roots are smallest members: members is sorted
    size = [1] * len(members)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    refused: list[int] = []
    exact_first = pairs.exact[order].tolist()
    for k, (a, b, exact) in enumerate(zip(local_i, local_j, exact_first, strict=True)):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if not exact and size[ra] + size[rb] > max_size:
            refused.append(k)
            continue
        lo, hi = min(ra, rb), max(ra, rb)
        parent[hi] = lo
        size[lo] += size[hi]
    before = root.copy()
    root[members] = members[[find(a) for a in range(len(members))]]
    cut[order[refused]] = True
    _warn(pairs, cut, before, root, sizes, max_size, names)
    return Groups(root, cut)


def _warn(
    pairs: NearPairs,
    cut: np.ndarray,
    component: np.ndarray,
    root: np.ndarray,
    sizes: np.ndarray,
    max_size: int,
    names: Sequence[str] | None,
) -> None:
    """One warning per component (``component``: ids before cutting) that lost pairs."""
    per_component = np.bincount(component[pairs.i[cut]], minlength=len(root))
    affected = np.flatnonzero(per_component)
    files_of = np.flatnonzero(np.isin(component, affected))
    files_of = files_of[np.argsort(component[files_of], kind="stable")]
    bounds = np.cumsum(sizes[affected])[:-1]
    for c, files in zip(affected, np.split(files_of, bounds), strict=True):
        shown = sorted(names[f] for f in files) if names is not None else files.tolist()
        log.warning(
            "near-duplicate component of %d files (%s, ...) exceeds the group cap of %d files "
            "(data.max_group_fraction): %d pairs cut, kept as %d groups",
            sizes[c],
            ", ".join(map(str, shown[:3])),
            max_size,
            per_component[c],
            len(np.unique(root[files])),
        )
