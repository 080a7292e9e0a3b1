"""Benchmark imgclf on this machine and write the table to BENCHMARKS.md (``make bench``).

Everything is measured in one run, on a fresh clone of the current commit placed beside the
project (so ``../shared`` resolves exactly as in CI), with its own MLflow store: the project's
own store and registry are never touched.

Rows:
- accuracy and leak-free accuracy of the default config and of the seed's plain CNN
  (``model=seed_cnn``), mean and spread over ``--seeds`` training seeds, on the same split;
- wall time of a full ``dvc repro`` (ingest to export) and of a no-op ``dvc repro``;
- training input throughput: the cached tensors pipeline versus decoding and resizing every
  file each epoch (what the seed's ImageDataGenerator did);
- prediction throughput on a batch of test images, and ``imgclf predict`` on one file,
  start-up and model load included.

Timings are noisy on shared machines: read them as this run's numbers, not as limits.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# The baseline is the seed project's recipe: its plain CNN, constant Adam 1e-3, no label
# smoothing, 40 epochs with early stopping on validation (no refit); on the same cached
# tensors (64x96, the default data.fit) and split, so only the model and training recipe differ.
SEED_RECIPE = [
    "model=seed_cnn",
    "optimizer.learning_rate=0.001",
    "optimizer.schedule=constant",
    "train.label_smoothing=0.0",
    "train.epochs=40",
    "train.refit=false",
]
CONFIGS: tuple[tuple[str, list[str]], ...] = (
    ("default config", []),
    ("seed recipe (model=seed_cnn)", SEED_RECIPE),
)


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd``, fail loudly, return (seconds, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return took, proc.stdout


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def accuracy_rows(clone: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Train + evaluate each config and seed in-process on the clone's cached split."""
    import keras
    import yaml

    from imgclf.compose import compose_params
    from imgclf.config import config_from_dict
    from imgclf.stages import evaluate, train

    rows = []
    for label, overrides in CONFIGS:
        accs, free, secs = [], [], []
        for seed in seeds:
            raw = yaml.safe_load(compose_params(clone / "conf", [*overrides, f"train.seed={seed}"]))
            cfg = config_from_dict(raw)
            work = clone / "bench" / f"{label.split()[0]}-{seed}"
            keras.backend.clear_session()
            t0 = time.perf_counter()
            train.run(cfg, in_dir=clone / "artifacts" / "preprocess", out_dir=work / "train")
            secs.append(time.perf_counter() - t0)
            res = evaluate.run(
                cfg,
                preprocess_dir=clone / "artifacts" / "preprocess",
                train_dir=work / "train",
                out_dir=work / "evaluate",
            )
            accs.append(res.accuracy)
            free.append(res.leakfree_accuracy or 0.0)
            keras.backend.clear_session()
            print(
                f"  {label} seed {seed}: accuracy {res.accuracy:.4f}, leak-free "
                f"{res.leakfree_accuracy:.4f}, train {secs[-1]:.0f} s",
                flush=True,
            )
        rows.append({"label": label, "acc": accs, "free": free, "secs": secs})
    return rows


def input_throughput(clone: Path, batch_size: int) -> tuple[float, float]:
    """Images/s of one training epoch's input: cached tensors vs decode+resize per file."""
    from imgclf.artifacts import load_dataset
    from imgclf.fileio import read_json
    from imgclf.images import load_resized
    from imgclf.training import make_datasets

    pre = clone / "artifacts" / "preprocess"
    arrays = load_dataset(pre / "dataset.npz")
    n_classes = len(read_json(pre / "classes.json"))
    height, width = arrays["x_train"].shape[1:3]
    train_ds, _ = make_datasets(arrays, n_classes, batch_size, seed=0)
    for _ in train_ds.take(1):  # build the pipeline before timing
        pass
    epochs, n = 3, 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _y in train_ds:
            n += int(x.shape[0])
    cached = n / (time.perf_counter() - t0)

    with (pre / "split.csv").open(newline="", encoding="utf-8") as f:
        paths = [
            clone / "data" / "id-cards" / r["path"]
            for r in csv.DictReader(f)
            if r["subset"] == "train"
        ]
    t0 = time.perf_counter()
    fit = read_json(pre / "input.json")["fit"]
    for p in paths:
        load_resized(p, int(height), int(width), fit)
    decoded = len(paths) / (time.perf_counter() - t0)
    return cached, decoded


def predict_speed(clone: Path, env: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Batch images/s on the test tensors, and wall seconds of one-file ``imgclf predict``.

    The batch rows time each predictor exactly as ``imgclf predict`` drives it (batches of
    32 already-resized images, decoding excluded): the export folder's default format (ONNX
    through onnxruntime) and the ``.h5`` through Keras.
    """
    from imgclf.artifacts import load_dataset
    from imgclf.predict import load_model

    export = clone / "artifacts" / "export"
    x = load_dataset(clone / "artifacts" / "preprocess" / "dataset.npz")["x_test"]
    batch: dict[str, float] = {}
    for fmt in ("onnx", "h5"):
        predictor = load_model(str(export), fmt).predictor
        predictor.predict(x[:32])  # warm-up: graph tracing, thread pools
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            for start in range(0, len(x), 32):
                predictor.predict(x[start : start + 32])
        batch[fmt] = reps * len(x) / (time.perf_counter() - t0)

    one = str(next((clone / "data" / "id-cards" / "Testing_Data" / "others").iterdir()))
    imgclf = str(Path(sys.executable).with_name("imgclf"))
    formats = clone / "artifacts" / "export" / "formats"

    def best_of(args: list[str], n: int = 3) -> float:
        return min(sh([imgclf, "predict", one, *args], clone, env)[0] for _ in range(n))

    best_of(["--model", str(formats / "model.h5")], 1)  # warm the page cache
    one_file = {
        "onnx": best_of(["--model", str(formats / "model.onnx")]),
        "h5": best_of(["--model", str(formats / "model.h5")]),
        "registry": best_of([], 2),  # models:/idcards@champion, its default format (ONNX)
    }
    return batch, one_file


def spread(xs: list[float]) -> str:
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * mean:.1f} % ± {100 * sd:.1f} (min {100 * min(xs):.1f})"


def render(results: dict[str, Any]) -> str:
    """The generated block of BENCHMARKS.md."""
    r = results
    lines = [
        START,
        f"Measured {r['date']} on {r['machine']}, commit `{r['commit']}`, "
        f"{len(r['seeds'])} seeds ({', '.join(map(str, r['seeds']))}), by `make bench`.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
    ]
    for row in r["accuracy"]:
        lines.append(
            f"| {row['label']}: test accuracy (150 files) | {spread(row['acc'])} | "
            f"{'≥ 99 %' if row['label'].startswith('default') else 'baseline'} |"
        )
        lines.append(
            f"| {row['label']}: `leakfree_accuracy` ({r['n_leakfree']} files) | "
            f"{spread(row['free'])} | "
            f"{'≥ 98 %' if row['label'].startswith('default') else 'baseline'} |"
        )
        lines.append(
            f"| {row['label']}: train stage time | {statistics.fmean(row['secs']):.0f} s mean | |"
        )
    lines += [
        f"| full `dvc repro` (ingest → export) | {r['repro_s']:.0f} s | ≤ 120 s |",
        f"| no-op `dvc repro` | {r['noop_s']:.2f} s | ≤ 2 s |",
        f"| training input, cached tensors | {r['cached_ips']:.0f} images/s | |",
        f"| training input, decode + resize every file | {r['decoded_ips']:.0f} images/s | |",
        f"| input pipeline speed-up | {r['cached_ips'] / r['decoded_ips']:.0f}× | ≥ 5× |",
        f"| batch prediction, test set, batches of 32, ONNX (`imgclf predict`'s default) | "
        f"{r['batch_ips']['onnx']:.0f} images/s | ≥ 300 images/s |",
        f"| batch prediction, test set, batches of 32, `.h5` through Keras | "
        f"{r['batch_ips']['h5']:.0f} images/s | |",
        f"| `imgclf predict` one file, `--model model.onnx` | {r['one_file']['onnx']:.2f} s | "
        "≤ 3 s |",
        f"| `imgclf predict` one file, `--model model.h5` (imports TensorFlow) | "
        f"{r['one_file']['h5']:.2f} s | |",
        f"| `imgclf predict` one file, `models:/idcards@champion` (imports MLflow) | "
        f"{r['one_file']['registry']:.2f} s | |",
        "",
        "Stage times of the full repro: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())
        + ".",
        END,
    ]
    return "\n".join(lines)


def write_benchmarks(path: Path, block: str) -> None:
    """Replace the generated block in ``path``, keeping the hand-written notes around it."""
    text = (
        path.read_text(encoding="utf-8") if path.is_file() else f"# Benchmarks\n\n{START}\n{END}\n"
    )
    if START not in text or END not in text:
        text = f"{text.rstrip()}\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(head + block + tail, encoding="utf-8")
    os.replace(tmp, path)


def stage_times(log: str) -> dict[str, float]:
    """Parse the ``<stage>: done in N s`` lines the stage doors log."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        if ": done in " in line:
            name, _, rest = line.rpartition(": done in ")
            out[name.split()[-1]] = float(rest.split()[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    clone = ROOT.parent / f".imgclf-bench-{uuid.uuid4().hex[:8]}"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(clone / "src"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    try:
        print(f"bench: cloning into {clone}", flush=True)
        sh(["git", "clone", "--quiet", str(ROOT), str(clone)], ROOT.parent, env)
        sh(["dvc", "pull", "--quiet", "data.dvc"], clone, env)
        print("bench: full dvc repro", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(["dvc", "repro"], cwd=clone, env=env, capture_output=True, text=True)
        repro_s = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"bench: dvc repro failed:\n{proc.stderr[-4000:]}")
        log_text = proc.stdout + proc.stderr  # the stage doors log "<stage>: done in N s"
        noop_s = min(sh(["dvc", "repro"], clone, env)[0] for _ in range(3))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}"
        os.environ["PYTHONPATH"] = str(clone / "src")
        sys.path.insert(0, str(clone / "src"))
        os.chdir(clone)  # lineage tags and the store resolve from the clone, like a stage
        print("bench: input throughput", flush=True)
        cached, decoded = input_throughput(clone, batch_size=32)
        print("bench: prediction", flush=True)
        batch, one_file = predict_speed(clone, env)
        print("bench: accuracy over seeds", flush=True)
        acc_rows = accuracy_rows(clone, args.seeds)
        metrics = json.loads((clone / "artifacts" / "evaluate" / "metrics.json").read_text())
        results = {
            "date": dt.date.today().isoformat(),
            "machine": f"{os.cpu_count()} cores ({cpu_name()}), {platform.platform(terse=True)}",
            "commit": commit,
            "seeds": args.seeds,
            "accuracy": acc_rows,
            "n_leakfree": metrics.get("n_leakfree", "?"),
            "repro_s": repro_s,
            "noop_s": noop_s,
            "stages": stage_times(log_text),
            "cached_ips": cached,
            "decoded_ips": decoded,
            "batch_ips": batch,
            "one_file": one_file,
        }
        block = render(results)
        print(block)
        write_benchmarks(args.out, block)
        print(f"bench: wrote {args.out}")
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
