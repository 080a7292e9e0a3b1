"""How far the same commit and seed drift when oneDNN runs another instruction set, and the cost.

An Intel Xeon runs oneDNN's AVX-512/AMX kernels where this AMD host runs AVX2 ones: oneDNN picks
them at run time. ``ONEDNN_MAX_CPU_ISA`` (oneDNN 3.7 in TensorFlow 2.21: SSE41, AVX, AVX2, ...;
an unknown value is ignored silently) caps that choice, so one host can train the same commit and
seed down several ISA code paths. Every row is a fresh process:

    python scripts/bench_isa.py train --epochs 3            # the matrix below, real data
    python scripts/bench_isa.py train --isa AVX2,SSE41 --onednn 1 --deterministic 0,1
    python scripts/bench_isa.py kernels                      # which oneDNN kernels each cap ran
    python scripts/bench_isa.py shortcut --reps 6            # bench_sweeps.py shortcut per cap

``train`` runs the train stage (``imgclf.stages.train.run``, committed params plus
``train.epochs``/``train.deterministic``) on ``artifacts/preprocess`` into a temporary folder with
a throwaway SQLite MLflow store, for each ISA cap x ``TF_ENABLE_ONEDNN_OPTS`` x
``train.deterministic``, and compares each row's ``history.csv`` and final weights with the first
row's: byte-identical, or the first differing epoch and the largest difference. Each child takes
``--lock`` (flock) so it never overlaps another benchmark. It prints a table; no pass/fail.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = "/tmp/imgclf-cpu.lock"


def _env(isa: str, onednn: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": onednn, **extra}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    env.pop("DNNL_MAX_CPU_ISA", None)
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


def _locked_run(cmd: list[str], env: dict[str, str], lock: str) -> subprocess.CompletedProcess:
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- children (one per row, so the env takes effect before TensorFlow loads) -----------------


def child_train(
    out: Path, epochs: int, deterministic: bool, preprocess: Path, extra: list[str]
) -> None:
    import keras
    import numpy as np

    from imgclf.compose import compose_config
    from imgclf.stages import train

    cfg = compose_config(
        overrides=[
            f"train.epochs={epochs}",
            f"train.deterministic={str(deterministic).lower()}",
            *extra,
        ]
    )
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.t)

        def on_train_end(self, logs=None):  # type: ignore[no-untyped-def]
            w = self.model.get_weights()
            np.savez(out / "weights.npz", *w)

    out.mkdir(parents=True, exist_ok=True)
    train.run(cfg, in_dir=preprocess, out_dir=out / "train", callbacks=[Timer()])
    (out / "epoch_seconds.json").write_text(json.dumps(times))


def child_kernels(preprocess: Path) -> None:
    """Two training steps of the default model on 64 real images (ONEDNN_VERBOSE set by caller)."""
    from imgclf.artifacts import PreprocessOutputs
    from imgclf.compose import compose_config
    from imgclf.training import prepare

    cfg = compose_config()
    pre = PreprocessOutputs(preprocess)
    train = pre.reader().subset("train")
    data = {"train": train.take(range(min(64, train.n))), "val": train.take([])}
    model, train_ds, _ = prepare(cfg, data, len(pre.read_classes()))
    model.fit(train_ds, epochs=1, verbose=0)


# --- the parent ---------------------------------------------------------------------------


def _history(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _compare(ref: Path, row: Path) -> str:
    """'identical' or where and how much ``row``'s history and weights differ from ``ref``'s."""
    import numpy as np

    a, b = ref / "train/history.csv", row / "train/history.csv"
    wa, wb = np.load(ref / "weights.npz"), np.load(row / "weights.npz")
    wdiff = max(float(np.max(np.abs(wa[k] - wb[k]))) if wa[k].size else 0.0 for k in wa.files)
    if a.read_bytes() == b.read_bytes():
        return "history identical" + ("" if wdiff == 0 else f"; weights max |diff| {wdiff:.2g}")
    ha, hb = _history(a), _history(b)
    i = next((j for j, (x, y) in enumerate(zip(ha, hb, strict=False)) if x != y), 0)
    ra, rb = ha[i], hb[i]
    d_loss = abs(float(ha[-1]["loss"]) - float(hb[-1]["loss"]))
    d_acc = abs(float(ha[-1]["accuracy"]) - float(hb[-1]["accuracy"]))
    return (
        f"differs from epoch {i + 1} (loss {float(ra['loss']):.6f} vs {float(rb['loss']):.6f}); "
        f"last epoch |d loss| {d_loss:.4f}, |d acc| {d_acc:.4f}; weights max |diff| {wdiff:.2g}"
    )


def cmd_train(a: argparse.Namespace) -> None:
    isas, onednns, dets = a.isa.split(","), a.onednn.split(","), a.deterministic.split(",")
    rows = list(itertools.product(dets, onednns, isas))
    tmp = Path(tempfile.mkdtemp(prefix="bench_isa-"))
    print(f"# {len(rows)} runs, {a.epochs} epochs, {a.set or ''} outputs in {tmp}", flush=True)
    print("| ISA cap | oneDNN | deterministic | epoch 1 s | later epochs s (mean) | vs first row |")
    print("|---|---|---|---|---|---|", flush=True)
    ref: Path | None = None
    for det, on, isa in rows:
        out = tmp / f"{isa}-onednn{on}-det{det}"
        env = _env(isa, on, MLFLOW_TRACKING_URI=f"sqlite:///{out}/mlflow.db")
        out.mkdir(parents=True)
        cmd = [sys.executable, __file__, "_train", "--out", str(out), "--epochs", str(a.epochs),
               "--deterministic", det, "--preprocess", str(a.preprocess),
               *(f"--set={o}" for o in a.set)]  # fmt: skip
        proc = _locked_run(cmd, env, a.lock)
        label = f"| {isa} | {'on' if on == '1' else 'off (`TF_ENABLE_ONEDNN_OPTS=0`)'} | {det} "
        if proc.returncode != 0:
            print(f"{label}| failed: exit {proc.returncode} | | {proc.stderr[-300:]!r} |")
            continue
        secs = json.loads((out / "epoch_seconds.json").read_text())
        later = sum(secs[1:]) / max(1, len(secs) - 1)
        same = "reference" if ref is None else _compare(ref, out)
        ref = ref or out
        print(f"{label}| {secs[0]:.1f} | {later:.1f} | {same} |", flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f}")


_EXEC = re.compile(r"onednn_verbose,(?:v1,)?primitive,exec,cpu,([^,]+),([^,]*),")


def cmd_kernels(a: argparse.Namespace) -> None:
    for on, isa in itertools.product(a.onednn.split(","), a.isa.split(",")):
        env = _env(isa, on, ONEDNN_VERBOSE="1")
        cmd = [sys.executable, __file__, "_kernels", "--preprocess", str(a.preprocess)]
        proc = _locked_run(cmd, env, a.lock)
        text = proc.stdout + proc.stderr
        info = re.search(r"info,cpu,isa:([^\n]+)", text)
        kinds = Counter(f"{k}:{impl or '(no name)'}" for k, impl in _EXEC.findall(text))
        print(f"## cap {isa}, oneDNN {'on' if on == '1' else 'off'}: "
              f"isa {info.group(1) if info else '?'}, exit {proc.returncode}")  # fmt: skip
        for name, n in kinds.most_common(a.top):
            print(f"  {n:6d}  {name}")
        first = next((ln for ln in text.splitlines() if ",exec,cpu,convolution," in ln), None)
        first = first or next((ln for ln in text.splitlines() if ",exec,cpu," in ln), None)
        print(f"  e.g. {first[:220] if first else '(no oneDNN primitive ran)'}", flush=True)


def cmd_shortcut(a: argparse.Namespace) -> None:
    bench = str(ROOT / "scripts/bench_sweeps.py")
    print("| ISA cap | strided 1x1, ms/step (min) | pool + 1x1, ms/step (min) | ratio (min) | "
          "ratio (median) |\n|---|---|---|---|---|", flush=True)  # fmt: skip
    for isa in a.isa.split(","):
        cmd = [sys.executable, bench, "shortcut", "--reps", str(a.reps)]
        proc = _locked_run(cmd, _env(isa, "1"), a.lock)
        if proc.returncode != 0:
            print(f"| {isa} | failed: exit {proc.returncode} | | | {proc.stderr[-200:]!r} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        m = r["ms_per_step_min"]
        print(f"| {isa} | {m['strided 1x1']} | {m['subsample + 1x1']} | {r['ratio_min']} | "
              f"{r['ratio_median']} |", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    pre = ROOT / "artifacts/preprocess"
    for name in ("train", "kernels", "shortcut"):
        s = sub.add_parser(name)
        s.add_argument("--isa", default="default,AVX,SSE41", help="ONEDNN_MAX_CPU_ISA values")
        s.add_argument("--lock", default=LOCK)
        s.add_argument("--preprocess", type=Path, default=pre)
        if name in ("train", "kernels"):
            s.add_argument("--onednn", default="1,0", help="TF_ENABLE_ONEDNN_OPTS values")
        if name == "train":
            s.add_argument("--epochs", type=int, default=3)
            s.add_argument("--deterministic", default="0,1")
            s.add_argument("--set", action="append", default=[], help="more overrides")
        if name == "kernels":
            s.add_argument("--top", type=int, default=6)
        if name == "shortcut":
            s.add_argument("--reps", type=int, default=6)
    c = sub.add_parser("_train")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--epochs", type=int, required=True)
    c.add_argument("--deterministic", required=True)
    c.add_argument("--preprocess", type=Path, required=True)
    c.add_argument("--set", action="append", default=[])
    k = sub.add_parser("_kernels")
    k.add_argument("--preprocess", type=Path, required=True)
    a = p.parse_args()
    if a.what == "_train":
        child_train(a.out, a.epochs, a.deterministic == "1", a.preprocess, a.set)
    elif a.what == "_kernels":
        child_kernels(a.preprocess)
    else:
        {"train": cmd_train, "kernels": cmd_kernels, "shortcut": cmd_shortcut}[a.what](a)


if __name__ == "__main__":
    main()
