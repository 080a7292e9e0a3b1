"""Near-duplicate pairs of 64-bit hashes, exact and sub-quadratic: multi-index hashing in numpy.

Two hashes are near duplicates when their Hamming distance is at most ``d``. Split the 64 bits
into ``m = d + 1`` chunks whose widths differ by at most one bit (16 bits each at ``d = 3``):
``d`` differing bits touch at most ``d`` chunks, so by the pigeonhole principle two hashes
within distance ``d`` agree exactly on at least one chunk. The candidates are therefore the pairs
that share a chunk value. Sorting each chunk's values (one ``argsort``) puts every value's
hashes in one run; every pair inside a run is checked with XOR + ``np.bitwise_count``, and a
pair that agrees on several chunks is kept only from the first chunk it agrees on, so it comes
out once. The result is the all-pairs answer, exactly: nothing is approximated and nothing can
be missed (tests/unit/test_neardup.py compares it with brute force).

Memory is O(n + pairs found + one block). Skewed hashes (forms, cards and blank pages look
alike to a 64-bit dHash) make runs of thousands of equal chunk values, millions of candidates:
they are enumerated and checked :data:`BLOCK` at a time, never all at once. Time is a sort per
chunk plus the candidates checked; for uniform hashes that is about ``n² m / 2^(64/m) / 2``
candidates, some 27 million for a million hashes at ``d = 3``.

Files with identical bytes (equal content ids, from the sha256) always pair, whatever their
hash distance: their pairs come from the same run enumeration over the content ids.

Why numpy and not faiss: faiss-cpu's ``IndexBinaryMultiHash`` implements the same
multi-index idea, but it is a new native dependency (a wheel per platform and CPU) for one
function; its binary ``range_search`` returns the distances strictly *below* the radius, so
``d`` must be passed as ``d + 1`` (an off-by-one waiting to happen); and it answers queries
against an index, so each pair comes back twice and needs deduplicating anyway. This module
needs nothing but numpy >= 2 (``np.bitwise_count``), is exact by construction, and pairs a
million hashes in seconds (BENCHMARKS.md, "Near-duplicate pairs at scale").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

BITS = 64
BLOCK = 1 << 20  # candidate pairs checked at once: ~50 MB of index arrays, whatever the skew


@dataclass(frozen=True)
class NearPairs:
    """Near-duplicate pairs ``i < j``, each once, sorted by ``(i, j)``."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    distance: np.ndarray  # uint8 Hamming distance of the two hashes
    exact: np.ndarray  # bool: same content id (identical bytes)

    def __len__(self) -> int:
        return len(self.i)

    def rows(self) -> list[tuple[int, int, int, bool]]:
        """``(i, j, distance, exact)`` per pair, as Python scalars (for loops over the pairs)."""
        return list(
            zip(
                self.i.tolist(),
                self.j.tolist(),
                self.distance.tolist(),
                self.exact.tolist(),
                strict=True,
            )
        )

    def select(self, mask: np.ndarray) -> NearPairs:
        """The pairs where ``mask`` is true, in the same order."""
        return NearPairs(self.i[mask], self.j[mask], self.distance[mask], self.exact[mask])


def hex_hashes(hashes: Sequence[str]) -> np.ndarray:
    """Hex hash strings (up to 16 digits each, as :func:`imgclf.leakage.dhash` writes) as uint64."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def content_ids(digests: Sequence[str]) -> np.ndarray:
    """Integer ids that are equal exactly where the digests are (numbered by first occurrence)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(d, len(ids)) for d in digests], dtype=np.int64)


def chunks(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of the ``max_distance + 1`` chunks, widths as even as possible.

    From ``max_distance >= 64`` on every pair is near: one chunk of no bits holds them all.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if max_distance >= BITS:
        return [(0, 0)]
    m = max_distance + 1
    base, extra = divmod(BITS, m)
    out, shift = [], 0
    for c in range(m):
        width = base + (c < extra)
        out.append((shift, width))
        shift += width
    return out


def _chunk(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)


def run_pairs(keys: np.ndarray, block: int = BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every index pair ``(a, b)``, ``a < b``, with ``keys[a] == keys[b]``, in pieces.

    Each piece holds about ``block`` pairs (more only when one index alone has more partners),
    so a run of thousands of equal keys never materialises all its pairs at once.
    """
    n = len(keys)
    if n < 2:
        return
    order = np.argsort(keys, kind="stable")  # stable: within a run, indices increase
    sk = keys[order]
    run_end = np.append(np.flatnonzero(sk[1:] != sk[:-1]) + 1, n)
    run_len = np.diff(run_end, prepend=0)
    partners = np.repeat(run_end, run_len) - np.arange(n) - 1  # later members of one's run
    pos = np.flatnonzero(partners)
    partners = partners[pos]
    cum = np.cumsum(partners)
    start, done = 0, 0  # done: pairs emitted before pos[start]
    while start < len(pos):
        stop = max(int(np.searchsorted(cum, done + block, side="right")), start + 1)
        count = partners[start:stop]
        total = int(cum[stop - 1]) - done
        left = np.repeat(pos[start:stop], count)
        step = np.arange(1, total + 1) - np.repeat(cum[start:stop] - count - done, count)
        yield order[left], order[left + step]
        done, start = int(cum[stop - 1]), stop


def near_pairs(
    hashes: np.ndarray,
    max_distance: int,
    content: np.ndarray | None = None,
    *,
    block: int = BLOCK,
) -> NearPairs:
    """All pairs within Hamming distance ``max_distance``, plus all pairs of equal ``content``.

    Args:
        hashes: uint64 hashes (:func:`hex_hashes`).
        content: optional content ids (:func:`content_ids` of the sha256s); equal ids always
            pair and are flagged ``exact``, whatever their distance.
        block: candidate pairs checked at once (the working-memory bound).
    """
    h = np.asarray(hashes, dtype=np.uint64)
    parts = chunks(max_distance)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for c, (shift, width) in enumerate(parts):
        for a, b in run_pairs(_chunk(h, shift, width), block):
            dist = np.bitwise_count(h[a] ^ h[b])
            near = dist <= max_distance
            a, b, dist = a[near], b[near], dist[near]
            x = h[a] ^ h[b]
            first = np.ones(len(a), bool)  # keep a pair only from the first chunk it shares
            for s, w in parts[:c]:
                first &= _chunk(x, s, w) != 0
            found.append((a[first], b[first], dist[first]))
    if content is not None:
        ids = np.asarray(content)
        for a, b in run_pairs(ids, block):
            dist = np.bitwise_count(h[a] ^ h[b])
            far = dist > max_distance  # the near ones came from the chunks already
            found.append((a[far], b[far], dist[far]))
    if not found:
        empty = np.zeros(0, np.int64)
        return NearPairs(empty, empty.copy(), np.zeros(0, np.uint8), np.zeros(0, bool))
    i = np.concatenate([f[0] for f in found]).astype(np.int64, copy=False)
    j = np.concatenate([f[1] for f in found]).astype(np.int64, copy=False)
    distance = np.concatenate([f[2] for f in found]).astype(np.uint8, copy=False)
    del found
    order = np.lexsort((j, i))
    i, j, distance = i[order], j[order], distance[order]
    exact = ids[i] == ids[j] if content is not None else np.zeros(len(i), bool)
    return NearPairs(i, j, distance, exact)
