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
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import bench_cv  # scripts/, beside this file
from bench_report import render, stage_times, write_benchmarks

ROOT = Path(__file__).resolve().parents[1]
# The baseline is the seed project's recipe: its plain CNN, constant Adam 1e-3, no label
# smoothing, 40 epochs with early stopping on validation (no refit), and its augmentation (zoom
# +-10 %, shift +-5 %: pinned, so changing the default's does not move the baseline); on the same
# cached tensors (64x96, the default data.fit) and split, so only the model and recipe differ.
SEED_RECIPE = [
    "model=seed_cnn",
    "augment.zoom=0.1",
    "augment.translation=0.05",
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

    from imgclf.artifacts import PreprocessOutputs
    from imgclf.compose import compose_config
    from imgclf.stages import evaluate, train

    rows = []
    for label, overrides in CONFIGS:
        accs, free, secs = [], [], []
        for seed in seeds:
            cfg = compose_config(clone / "conf", [*overrides, f"train.seed={seed}"])
            work = clone / "bench" / f"{label.split()[0]}-{seed}"
            keras.backend.clear_session()
            t0 = time.perf_counter()
            pre = PreprocessOutputs.in_project(clone).root
            train.run(cfg, in_dir=pre, out_dir=work / "train")
            secs.append(time.perf_counter() - t0)
            res = evaluate.run(
                cfg,
                preprocess_dir=pre,
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
    """Images/s of one training epoch's input: streamed shards vs decode+resize per file."""
    from imgclf.artifacts import PreprocessOutputs
    from imgclf.images import load_resized
    from imgclf.training import make_datasets

    pre = PreprocessOutputs.in_project(clone)
    reader = pre.reader()
    data = {s: reader.subset(s) for s in ("train", "val")}
    n_classes = len(pre.read_classes())
    height, width = reader.image_shape[:2]
    train_ds, _ = make_datasets(data, n_classes, batch_size, seed=0)
    for _ in train_ds.take(1):  # build the pipeline before timing
        pass
    epochs, n = 3, 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _y in train_ds:
            n += int(x.shape[0])
    cached = n / (time.perf_counter() - t0)

    paths = [clone / "data" / "id-cards" / r["path"] for r in pre.read_split("train")]
    t0 = time.perf_counter()
    fit = pre.read_fit()
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
    from imgclf.artifacts import FORMAT_FILES, ExportOutputs, PreprocessOutputs
    from imgclf.predict import load_model

    export = ExportOutputs.in_project(clone).root
    x = PreprocessOutputs.in_project(clone).reader().subset("test")
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
    model = ExportOutputs.in_project(clone).model

    def best_of(args: list[str], n: int = 3) -> float:
        return min(sh([imgclf, "predict", one, *args], clone, env)[0] for _ in range(n))

    def file_of(fmt: str) -> list[str]:
        return ["--model", str(model.root / FORMAT_FILES[fmt])]

    best_of(file_of("h5"), 1)  # warm the page cache
    one_file = {
        "onnx": best_of(file_of("onnx")),
        "h5": best_of(file_of("h5")),
        "registry": best_of([], 2),  # the project's @champion, its default format (ONNX)
    }
    return batch, one_file


def use_clone(clone: Path) -> None:
    """From here on, imgclf in this process logs to, and reads from, the clone."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}"
    os.environ["PYTHONPATH"] = str(clone / "src")
    sys.path.insert(0, str(clone / "src"))
    os.chdir(clone)  # lineage tags and the store resolve from the clone, like a stage


def machine() -> str:
    return f"{os.cpu_count()} cores ({cpu_name()}), {platform.platform(terse=True)}"


def host_cpu() -> str:
    from imgclf.host import host_cpu as described

    return described()


def classes(clone: Path) -> list[str]:
    from imgclf.artifacts import PreprocessOutputs

    return PreprocessOutputs.in_project(clone).read_classes()


def table(clone: Path, env: dict[str, str], args: argparse.Namespace, commit: str) -> None:
    """The main table: repro times, input and prediction speed, test-set accuracy by seed."""
    print("bench: full dvc repro", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=clone, env=env, capture_output=True, text=True)
    repro_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: dvc repro failed:\n{proc.stderr[-4000:]}")
    log_text = proc.stdout + proc.stderr  # the stage doors log "<stage>: done in N s"
    noop_s = min(sh(["dvc", "repro"], clone, env)[0] for _ in range(3))
    use_clone(clone)
    from imgclf.artifacts import EvaluateOutputs
    from imgclf.predict import default_model_uri

    print("bench: input throughput", flush=True)
    cached, decoded = input_throughput(clone, batch_size=32)
    print("bench: prediction", flush=True)
    batch, one_file = predict_speed(clone, env)
    print("bench: test-set accuracy over seeds", flush=True)
    acc_rows = accuracy_rows(clone, args.seeds)
    metrics = EvaluateOutputs.in_project(clone).read_metrics()
    results = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
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
        "champion": default_model_uri(clone),
    }
    block = render(results)
    print(block)
    write_benchmarks(args.out, block)
    bench_cv.write_json(args.json, {"table": results | {"host_cpu": host_cpu()}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks.json")
    parser.add_argument(
        "--only",
        choices=("all", "cv", "table", "render"),
        default="all",
        help="cv: only the cross-validation rows (their own block of BENCHMARKS.md); table: "
        "only the main table (test-set accuracy by seed, repro time, throughput); render: "
        "redraw the CV block from --json's figures, measuring nothing",
    )
    parser.add_argument(
        "--cv-repeats",
        type=int,
        default=1,
        help="train every fold under this many seeds (cv.repeats): the CV rows become means "
        "over seeds, their intervals cover the seed; costs that many times the CV part",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args()

    if args.only == "render":
        figures = bench_cv.results(json.loads(args.json.read_text(encoding="utf-8")))
        block = bench_cv.render(figures, bench_cv.classes_of(figures["default"]))
        write_benchmarks(args.out, block, bench_cv.START, bench_cv.END)
        print(f"bench: redrew the CV block of {args.out} from {args.json}")
        return 0
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
        if args.only == "cv":
            sh(["dvc", "repro", "--quiet", "preprocess"], clone, env)
            use_clone(clone)
        else:
            table(clone, env, args, commit)
        if args.only == "table":
            return 0
        print("bench: grouped cross-validation", flush=True)
        cv = bench_cv.cv_rows(clone, [], SEED_RECIPE, args.cv_repeats)
        cv |= {"date": dt.date.today().isoformat(), "machine": machine(), "commit": commit}
        cv["host_cpu"] = host_cpu()
        block = bench_cv.render(cv, classes(clone))
        print(block)
        write_benchmarks(args.out, block, bench_cv.START, bench_cv.END)
        bench_cv.write_json(args.json, bench_cv.figures(cv))
        print(f"bench: wrote {args.out} and {args.json}")
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
