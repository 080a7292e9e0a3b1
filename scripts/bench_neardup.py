"""Near-duplicate pairs and capped groups at 10k, 100k and 1M hashes: seconds and peak memory.

Each row runs in a fresh child process, so its peak RSS (``resource.getrusage``) is that row's
alone: the interpreter and numpy, the hashes, the pairs found and the grouping. Two kinds of
hashes:

- uniform: random 64-bit hashes (no near pairs to speak of: the cost is the candidates alone);
- skewed: a few hundred layout centres (``--centres``), each hash its centre with 4 to 8 random
  bits flipped (look-alike forms: runs of thousands of equal 16-bit chunks, so the candidates
  go through the crowded-run blocks).

The timed part is :func:`imgclf.data.neardup.near_pairs` (distance 3, every file its own
content id) then :func:`imgclf.data.groups.capped_groups` at ``--fraction``; turning hex
strings and sha256s into arrays is not in it. Prints a markdown table; target: 1M hashes in
<= 30 s and <= 1 GB.

    python scripts/bench_neardup.py [--sizes 10000 100000 1000000] [--fraction 0.05]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

DISTANCE = 3


def hashes(n: int, kind: str, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    centre = rng.integers(0, 2**64 - 1, centres, dtype=np.uint64, endpoint=True)
    h = centre[rng.integers(0, centres, n)]
    flips = rng.integers(4, 9, n)
    for f in range(8):
        on = flips > f
        h[on] ^= np.uint64(1) << rng.integers(0, 64, int(on.sum())).astype(np.uint64)
    return h


def row(n: int, kind: str, centres: int, fraction: float) -> dict[str, float]:
    """One measurement, in this process (the parent runs it in a child)."""
    import scipy.sparse.csgraph  # noqa: F401  (imported once per process, not per call: untimed)

    from imgclf.data.groups import capped_groups, max_group_size
    from imgclf.data.neardup import near_pairs

    h = hashes(n, kind, centres)
    start = time.perf_counter()
    pairs = near_pairs(h, DISTANCE, np.arange(n))
    found = time.perf_counter()
    groups = capped_groups(n, pairs, max_group_size(n, fraction))
    done = time.perf_counter()
    return {
        "pairs": len(pairs),
        "cut": groups.cut_pairs,
        "largest": int(np.bincount(groups.root).max()),
        "pairs_s": found - start,
        "groups_s": done - found,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=["uniform", "skewed"])
    p.add_argument("--centres", type=int, default=300)
    p.add_argument("--fraction", type=float, default=0.05, help="data.max_group_fraction")
    p.add_argument("--row", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        print(json.dumps(row(int(args.row[0]), args.row[1], args.centres, args.fraction)))
        return
    print(
        f"Distance {DISTANCE}, skewed: {args.centres} centres, max_group_fraction {args.fraction}"
    )
    print()
    print(
        "| n | kind | pairs found | cut pairs | largest group | seconds (pairs + groups) "
        "| peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for kind in args.kinds:
            cmd = [sys.executable, __file__, "--row", str(n), kind]
            cmd += ["--centres", str(args.centres), "--fraction", str(args.fraction)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            seconds = r["pairs_s"] + r["groups_s"]
            print(
                f"| {n:,} | {kind} | {r['pairs']:,} | {r['cut']:,} | {r['largest']:,} "
                f"| {seconds:.2f} ({r['pairs_s']:.2f} + {r['groups_s']:.2f}) "
                f"| {r['rss_mb']:.0f} MB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
