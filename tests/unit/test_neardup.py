"""Near-duplicate pairs (imgclf.data.neardup) against brute force, and the group cap
(imgclf.data.groups, imgclf.leakage.find_duplicates)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from imgclf.data.groups import capped_groups, components, max_group_size
from imgclf.data.neardup import NearPairs, chunks, near_pairs, run_pairs
from imgclf.leakage import Item, find_duplicates


def uniform_hashes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


def skewed_hashes(n: int, seed: int, centres: int = 5, max_flips: int = 4) -> np.ndarray:
    """A few centres, each hash its centre with 0..max_flips random bits flipped."""
    rng = np.random.default_rng(seed)
    h = uniform_hashes(centres, seed + 1000)[rng.integers(0, centres, n)]
    flips = rng.integers(0, max_flips + 1, n)
    for f in range(max_flips):
        on = flips > f
        h[on] ^= np.uint64(1) << rng.integers(0, 64, int(on.sum())).astype(np.uint64)
    return h


def brute_force(
    h: np.ndarray, d: int, content: np.ndarray | None = None, block: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs by comparing every hash with every other, ``block`` rows at a time."""
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(h), block):
        rows = np.arange(start, min(start + block, len(h)))
        cols = np.arange(start, len(h))  # the upper triangle only
        dist = np.bitwise_count(h[rows, None] ^ h[None, cols])
        near = dist <= d
        if content is not None:
            near |= content[rows, None] == content[None, cols]
        near &= rows[:, None] < cols[None, :]
        r, c = np.nonzero(near)
        out_i.append(rows[r])
        out_j.append(cols[c])
        out_d.append(dist[r, c])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def assert_same(p: NearPairs, h: np.ndarray, d: int, content: np.ndarray | None = None) -> None:
    i, j, dist = brute_force(h, d, content)
    np.testing.assert_array_equal(p.i, i)
    np.testing.assert_array_equal(p.j, j)
    np.testing.assert_array_equal(p.distance, dist)
    expected = content[i] == content[j] if content is not None else np.zeros(len(i), bool)
    np.testing.assert_array_equal(p.exact, expected)


@pytest.mark.parametrize("d", range(6))
@pytest.mark.parametrize("kind", ["uniform", "skewed"])
def test_pairs_equal_brute_force(kind: str, d: int) -> None:
    h = uniform_hashes(1500, d) if kind == "uniform" else skewed_hashes(1500, d)
    if kind == "uniform":  # plant near twins: uniform 64-bit hashes are otherwise all far apart
        rng = np.random.default_rng(d)
        twins = h[:300] ^ (np.uint64(1) << rng.integers(0, 64, 300).astype(np.uint64))
        h = np.concatenate([h, twins, h[:50]])
    p = near_pairs(h, d, block=997)  # a small block: crowded runs span many blocks
    assert len(p) > (0 if kind == "uniform" and d == 0 else 100)  # never a vacuous comparison
    assert_same(p, h, d)
    assert np.all(p.i < p.j)
    keys = p.i * len(h) + p.j
    assert np.all(np.diff(keys) > 0)  # sorted by (i, j), each pair once


def test_chunks_cover_the_64_bits_as_evenly_as_possible() -> None:
    assert chunks(3) == [(0, 16), (16, 16), (32, 16), (48, 16)]
    assert [w for _, w in chunks(4)] == [13, 13, 13, 13, 12]
    for d in range(64):
        widths = [w for _, w in chunks(d)]
        assert len(widths) == d + 1 and sum(widths) == 64 and max(widths) - min(widths) <= 1
    assert chunks(64) == [(0, 0)]


def test_run_pairs_enumerates_each_equal_key_pair_once_in_small_blocks() -> None:
    keys = np.array([3, 1, 3, 3, 2, 1, 3])
    blocks = list(run_pairs(keys, block=2))
    assert all(len(a) <= 3 for a, _ in blocks)
    got = sorted((int(a), int(b)) for a_, b_ in blocks for a, b in zip(a_, b_, strict=True))
    assert got == [(0, 2), (0, 3), (0, 6), (1, 5), (2, 3), (2, 6), (3, 6)]


def test_exact_copies_pair_whatever_their_hash_distance() -> None:
    h = np.array([0, 2**64 - 1, 0b1, 0xFFFF_0000_0000_0000], dtype=np.uint64)
    content = np.array([7, 7, 8, 9])  # files 0 and 1 identical bytes, hashes 64 bits apart
    p = near_pairs(h, 3, content)
    assert p.rows() == [
        (0, 1, 64, True),
        (0, 2, 1, False),
    ]
    assert_same(p, h, 3, content)


def test_exact_copies_among_skewed_hashes_equal_brute_force() -> None:
    h = skewed_hashes(1000, 3)
    content = np.random.default_rng(3).integers(0, 700, len(h))  # many far-apart "copies"
    assert_same(near_pairs(h, 2, content, block=500), h, 2, content)


def test_every_pair_is_near_from_distance_64() -> None:
    h = uniform_hashes(40, 1)
    p = near_pairs(h, 64)
    assert len(p) == 40 * 39 // 2
    assert_same(p, h, 64)


def test_twenty_thousand_skewed_hashes_equal_blockwise_brute_force() -> None:
    # A 20k x 20k matrix would be 400M cells; the pairs come from 16-bit runs of thousands.
    h = skewed_hashes(20_000, 7, centres=8, max_flips=8)
    _, run = np.unique(h & np.uint64(0xFFFF), return_counts=True)
    assert run.max() > 1000  # crowded: thousands of equal chunk values, blocks of candidates
    p = near_pairs(h, 3)
    assert len(p) > 100_000
    assert_same(p, h, 3)


# --- the group cap ----------------------------------------------------------------------------


def chain(n: int, exact: tuple[int, ...] = ()) -> NearPairs:
    """Files 0-1-2-...-(n-1), each link at distance 1 (or an exact copy where listed)."""
    i = np.arange(n - 1)
    ex = np.isin(i, list(exact))
    return NearPairs(i, i + 1, np.where(ex, 0, 1).astype(np.uint8), ex)


def test_no_cut_means_the_connected_components() -> None:
    h = skewed_hashes(3000, 11, centres=20, max_flips=6)
    p = near_pairs(h, 3)
    g = capped_groups(len(h), p, max_size=len(h))
    assert g.cut_pairs == 0
    np.testing.assert_array_equal(g.root, components(len(h), p))
    big = np.bincount(g.root).max()
    assert big > 20  # the test has groups to keep whole
    g2 = capped_groups(len(h), p, max_size=big)
    assert g2.cut_pairs == 0
    np.testing.assert_array_equal(g2.root, g.root)


def test_a_chain_is_cut_into_groups_no_larger_than_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    names = [f"f/{k:03d}.png" for k in range(101)]
    with caplog.at_level(logging.WARNING):
        g = capped_groups(101, chain(101), max_size=10, names=names)
    sizes = np.bincount(g.root)
    assert sizes.max() == 10 and sizes.sum() == 101
    assert g.cut_pairs == 10  # 11 groups of the 101 files, one cut between each
    assert len(set(g.root.tolist())) == 11
    assert g.root[0] == 0 and g.root[9] == 0 and g.root[10] == 10  # (i, j) order breaks ties
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "101 files (f/000.png, f/001.png, f/002.png, ...)" in warning[0]
    assert "10 pairs cut" in warning[0]


def test_exact_copies_are_never_cut_and_go_first() -> None:
    # 0..19 a chain; 5-6 ... 13-14 are exact copies, so 5..14 (10 files) join before any near pair
    exact = tuple(range(5, 14))
    g = capped_groups(20, chain(20, exact), max_size=4)
    assert len(set(g.root[5:15].tolist())) == 1  # the exact run stays whole, over the cap
    assert not g.cut[list(exact)].any()
    assert g.cut[4] and g.cut[14]  # the near links into the oversized group are refused
    assert np.bincount(g.root)[g.root[0]] == 4  # 0..3 fill one group to the cap


def test_closer_pairs_win_the_cap() -> None:
    # 0-1 at distance 3 comes first by index, but 1-2 at distance 1 is closer: it is kept
    p = NearPairs(np.array([0, 1]), np.array([1, 2]), np.array([3, 1], np.uint8), np.zeros(2, bool))
    g = capped_groups(3, p, max_size=2)
    assert g.root.tolist() == [0, 1, 1] and g.cut.tolist() == [True, False]
    assert max_group_size(3, 0.05) == 50 and max_group_size(1000, 0.05) == 50
    assert max_group_size(100_000, 0.05) == 5000 and max_group_size(100_000, 1.0) == 100_000


def _hex(v: int) -> str:
    return f"{v:016x}"


def _walk(k: int) -> int:
    """Hash k of a walk where hashes k and k+1 differ in one bit and no others are that close
    (for k < 127): the low k bits set, then from 64 on the low bits cleared one by one."""
    return (1 << k) - 1 if k <= 64 else ((1 << 64) - 1) ^ ((1 << (k - 64)) - 1)


def test_find_duplicates_reports_cuts_and_a_cut_pair_still_leaks() -> None:
    # Training files 0..119 chained at distance 1 (120 look-alikes); a test file equal to the
    # last training hash. A 10 % cap of 122 files is under the floor of 50: groups of 50 files.
    train = [_walk(k) for k in range(120)]
    items = [Item(f"tr/a/{k:03d}.png", "a", "tr", f"s{k}", _hex(v)) for k, v in enumerate(train)]
    items += [
        Item("te/a/twin.png", "a", "te", "t1", _hex(train[-1])),
        Item("te/a/clean.png", "a", "te", "t2", _hex(0xF0F0_F0F0_F0F0_F0F0)),
    ]
    uncapped = find_duplicates(items, 1, "tr", "te")
    capped = find_duplicates(items, 1, "tr", "te", max_group_fraction=0.1)
    assert uncapped["summary"]["cut_pairs"] == 0 and len(set(uncapped["group"][:120])) == 1
    s = capped["summary"]
    assert s["cut_pairs"] == 2  # 120 files into groups of at most 50: 50 + 50 + 20
    assert sorted(np.bincount(capped["group"][:120])[np.bincount(capped["group"][:120]) > 0]) == [
        20,
        50,
        50,
    ]
    assert s["near_pairs"] == uncapped["summary"]["near_pairs"] == 119 + 2  # chain + 2 twins
    assert (s["leaky_test_files"], s["leakfree_test_files"]) == (1, 1)
    assert [r["path"] for r in capped["leakage"]] == ["te/a/twin.png"]
    assert [t["path"] for t in capped["leakage"][0]["twins"]] == ["tr/a/119.png", "tr/a/118.png"]
    assert capped["leak"][118:] == [True, True, True, False]


def test_a_small_dataset_keeps_its_components_whatever_the_fraction() -> None:
    train = [_walk(k) for k in range(40)]
    items = [Item(f"tr/a/{k:02d}.png", "a", "tr", f"s{k}", _hex(v)) for k, v in enumerate(train)]
    capped = find_duplicates(items, 1, "tr", None, max_group_fraction=0.01)
    assert capped["summary"]["cut_pairs"] == 0 and len(set(capped["group"])) == 1
