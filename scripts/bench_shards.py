"""Peak memory of preprocess, one training epoch and evaluate, streamed shards vs in-memory.

Writes a synthetic dataset of small JPEGs (``--n`` images, three classes, seeded, quick to make),
runs ingest once, then for each code tree given (``--tree label=/path/to/src``: this checkout's
``src`` and, say, another worktree's) runs each stage in a fresh process with that tree first on
``PYTHONPATH`` and prints the process's peak RSS (``wait4``'s ``ru_maxrss``, the stage's whole
process tree). ``--readers`` also compares the two ways of reading shard rows for one shuffled
pass over the train subset: positioned reads into a batch buffer vs ``np.load(mmap_mode="r")``.

    python scripts/bench_shards.py --work /tmp/mem --n 20000 --tree new=src --tree old=../main/src
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from imgclf.artifacts import IngestOutputs

STEP = r"""
import os, sys
from pathlib import Path
step, work = sys.argv[1], Path(sys.argv[2])
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
from imgclf.compose import compose_config
cfg = compose_config(overrides=["model=cnn", "train.epochs=1", "data.workers=2", "train.threads=2"])
data, art = work.parent / "data", work
if step == "ingest":
    from imgclf.stages import ingest
    ingest.run(cfg, in_dir=data, out_dir=work.parent / "ingest", track=False)
elif step == "preprocess":
    from imgclf.stages import preprocess
    ing = work.parent / "ingest"
    preprocess.run(cfg, data_dir=data, ingest_dir=ing, out_dir=art / "preprocess")
elif step == "train":
    from imgclf.stages import train
    train.run(cfg, in_dir=art / "preprocess", out_dir=art / "train")
elif step == "evaluate":
    from imgclf.stages import evaluate
    evaluate.run(cfg, preprocess_dir=art / "preprocess", train_dir=art / "train",
                 out_dir=art / "evaluate")
elif step in ("pread", "mmap"):
    import numpy as np
    from imgclf.artifacts import PreprocessOutputs
    reader = PreprocessOutputs(art / "preprocess").reader()
    train = reader.subset("train")
    order = np.random.default_rng(0).permutation(train.n)
    if step == "pread":
        for i in range(0, train.n, 64):
            batch = train.rows(order[i : i + 64])
    else:
        shards = [np.load(reader._files[k], mmap_mode="r") for k in range(len(reader._files))]
        starts = reader._starts
        for i in range(0, train.n, 64):
            ids = train.ids[order[i : i + 64]]
            s = np.searchsorted(starts, ids, side="right") - 1
            batch = np.stack([shards[a][b] for a, b in zip(s, ids - starts[s])])
"""


def write_jpegs(root: Path, n: int) -> None:
    """``n`` small JPEGs in three visibly different classes, 80 % Training_data."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)
    for i in range(n):
        split = "Training_data" if i % 5 else "Testing_Data"
        k = i % 3
        folder = root / split / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        small = (base[k] // 2 + noise // 2).astype(np.uint8)
        Image.fromarray(small).resize((120, 80)).save(folder / f"{i:06d}.jpg", quality=80)


def run_step(tree: str, step: str, work: Path) -> float:
    """Peak RSS (MB) of ``step`` in a fresh process with ``tree`` first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.Popen(
        [sys.executable, "-c", STEP, step, str(work)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{step}.log", "w"),  # noqa: SIM115
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{step} under {tree} failed: see {work / f'{step}.log'}")
    return usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--tree", action="append", required=True, help="label=path/to/src")
    ap.add_argument("--readers", action="store_true")
    args = ap.parse_args()
    data = args.work / "data"
    if not data.is_dir():
        write_jpegs(data, args.n)
    trees = dict(t.split("=", 1) for t in args.tree)
    if not IngestOutputs(args.work / "ingest").index.is_file():
        (args.work / "ingest-run").mkdir(parents=True, exist_ok=True)
        run_step(
            str(Path(next(iter(trees.values()))).resolve()), "ingest", args.work / "ingest-run"
        )
    steps = ["preprocess", "train", "evaluate"]
    rows = []
    for label, tree in trees.items():
        work = args.work / label
        work.mkdir(parents=True, exist_ok=True)
        rows.append((label, [run_step(str(Path(tree).resolve()), s, work) for s in steps]))
        print(label, *(f"{s} {mb:.0f} MB" for s, mb in zip(steps, rows[-1][1], strict=True)))
    print(f"| code | {' | '.join(steps)} |")
    print(f"|---|{'---|' * len(steps)}")
    for label, mbs in rows:
        print(f"| {label} | {' | '.join(f'{mb:.0f} MB' for mb in mbs)} |")
    if args.readers:
        tree, work = next(iter(trees.values())), args.work / next(iter(trees))
        for how in ("pread", "mmap"):
            print(f"one shuffled pass over train, {how}: {run_step(tree, how, work):.0f} MB")


if __name__ == "__main__":
    main()
