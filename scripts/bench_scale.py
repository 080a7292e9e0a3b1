"""Each pipeline stage at 1k, 10k, 100k synthetic images: wall time, images/s, peak memory.

``make bench-scale``. For each size, a synthetic dataset (:mod:`imgclf.data.synth`: card-like
JPEGs, 5 classes, 2 % exact and 2 % near copies across the split) is written once, outside the
timing, into a temporary project folder with its own params file (conf/ composed with
``train.epochs=1``) and its own SQLite MLflow store. Then each stage runs as its own process,
with the arguments dvc.yaml gives it (``python -m imgclf.cli <stage> --params ... --out ...``,
the ``imgclf`` console script's code), in that order: ingest, preprocess, train, evaluate.

Memory, per stage process:
- peak RSS: ``ru_maxrss`` from ``os.wait4`` on the stage's pid. Linux reports the largest
  single process of the stage's tree there (the stage, or one of its decoding workers, once
  reaped), not their sum Linux also carries the parent's RSS at fork into a child's
  ``ru_maxrss``, so this script's own RSS when it starts a stage is a floor under the figure
  (tests/unit/test_bench_scale.py starts its stage from a small process for that reason);
- tree RSS: the sum over the stage's process group (its pool workers included), sampled every
  0.2 s from /proc. It is also the guard: above ``--max-rss-gb`` the whole group is killed and
  the row says so. An RSS guard rather than ``RLIMIT_AS``: TensorFlow reserves far more address
  space than it touches, so an address-space cap fails it for the wrong reason.
A stage that fails, passes the guard or ``--timeout`` is a row (``failed: MemoryError``,
``killed: tree RSS over 6 GB``, ``exit 1``), and the stages after it are skipped.

The yardstick row is what the machine allows for ingest + preprocess on the same files: one
read, one sha256 and one Pillow draft-mode decode (at preprocess's draft size) per file, in a
process pool over every core. ``ingest + preprocess`` is their summed wall time against it.

A size may name its own stages: ``--sizes 1000,10000,100000:ingest``. The table is printed;
``--json PATH`` merges the figures into PATH under ``scale`` (benchmarks.json's other figures
stay) and ``--markdown PATH`` rewrites the ``bench-scale`` block of that file (BENCHMARKS.md).
Timings are this run's on a shared machine, not limits.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

import bench_cv  # noqa: E402  (scripts/, beside this file)
from bench_report import write_benchmarks  # noqa: E402

START, END = "<!-- bench-scale:start -->", "<!-- bench-scale:end -->"
STAGES = ("ingest", "preprocess", "train", "evaluate")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def stage_args(stage: str, data: Path, art: Path) -> list[str]:
    """The stage's folders, as dvc.yaml passes them (artifacts/<stage> under the project)."""
    inputs = {
        "ingest": ["--data", str(data)],
        "preprocess": ["--data", str(data), "--ingest", str(art / "ingest")],
        "train": ["--preprocess", str(art / "preprocess")],
        "evaluate": ["--preprocess", str(art / "preprocess"), "--train", str(art / "train")],
    }[stage]
    return [*inputs, "--out", str(art / stage)]


def group_rss(pgid: int) -> int:
    """Bytes resident in every process of group ``pgid`` (from /proc/<pid>/stat)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... rss is 22nd
            total += int(fields[21]) * PAGE
    return total


def run_stage(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, cap: int, timeout: float):
    """Run one stage process under the guard: its wall time, peak RSS and how it ended."""
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        tree, killed = 0, ""
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree = max(tree, group_rss(proc.pid))
            elapsed = time.perf_counter() - started
            if not killed and (tree > cap or elapsed > timeout):
                killed = (
                    f"killed: tree RSS over {cap / 2**30:g} GB"
                    if tree > cap
                    else f"killed: over the {timeout:.0f} s timeout"
                )
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a pool worker the stage left behind
    outcome = killed or ("ok" if proc.returncode == 0 else failure(log, proc.returncode))
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the stage and its reaped workers
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "tree_rss_mb": tree / MB,
        "status": outcome,
    }


def failure(log: Path, code: int) -> str:
    """``failed: MemoryError`` when the log says so, else the exit status and its last line."""
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-30:]
    if any("MemoryError" in line for line in tail):
        return "failed: MemoryError"
    last = tail[-1][:120] if tail else ""
    return f"failed: exit {code}" + (f" ({last})" if last else "")


def _yard_one(path: str, size: tuple[int, int]) -> int:
    from PIL import Image

    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", size)
        img.load()
    return len(data)


def yardstick(data: Path, params: Path) -> dict[str, float]:
    """One read, sha256 and draft decode per file across every core: wall s and images/s."""
    import functools

    from imgclf.images import draft_size
    from imgclf.parallel import map_in_processes, worker_count
    from imgclf.params import load_config

    cfg = load_config(params).data
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    cpu0 = _cpu()
    started = time.perf_counter()
    one = functools.partial(_yard_one, size=draft_size(cfg.image_height, cfg.image_width))
    map_in_processes(one, files)  # its pool's workers are reaped when it returns
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "cpu_s": _cpu() - cpu0,
        "images_per_s": len(files) / wall,
        "workers": worker_count(),
    }


def _cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure_size(
    n: int, stages: list[str], work: Path, env: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate ``n`` images, then the yardstick and each stage in turn."""
    from imgclf.data.synth import write_synthetic

    project = work / f"n{n}"
    project.mkdir()
    params = project / "params.yaml"
    subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "params", "--conf", str(ROOT / "conf")]
        + ["--out", str(params), *args.override],
        check=True,
        env=env,
        capture_output=True,
    )
    data = project / "data"
    print(f"bench-scale: writing {n} images", flush=True)
    s = write_synthetic(data, n, seed=args.seed)
    gen = {"n": n, "seconds": s.seconds, "images_per_s": n / s.seconds}
    gen["mb"] = s.bytes_written / 1e6
    print(f"  {n} images, {gen['mb']:.0f} MB in {s.seconds:.1f} s", flush=True)
    rows = [{"stage": "yardstick", "n": n, **yardstick(data, params), "status": "ok"}]
    print(f"  yardstick: {rows[0]['wall_s']:.1f} s", flush=True)
    stage_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    broken = ""
    for stage in stages:
        if broken:
            rows.append({"stage": stage, "n": n, "status": f"skipped: {broken} did not finish"})
            continue
        cmd = [sys.executable, "-m", "imgclf.cli", stage, "--params", str(params)]
        cmd += stage_args(stage, data, project / "artifacts")
        log = project / f"{stage}.log"
        r = run_stage(cmd, project, stage_env, log, int(args.max_rss_gb * 2**30), args.timeout)
        r["images_per_s"] = n / r["wall_s"]
        if stage == "evaluate" and r["status"] == "ok":
            r |= learned(project)
        rows.append({"stage": stage, "n": n, **r})
        print(f"  {stage}: {r['wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB, {r['status']}")
        if r["status"] != "ok":
            broken = stage
    return gen, rows


def learned(project: Path) -> dict[str, float]:
    """Evaluate's test and leak-free accuracy: whether one epoch learned the synthetic classes."""
    from imgclf.artifacts import EvaluateOutputs

    m = EvaluateOutputs.in_project(project).read_metrics()
    return {k: m[k] for k in ("accuracy", "leakfree_accuracy") if m.get(k) is not None}


def render(scale: dict[str, Any]) -> str:
    """The ``bench-scale`` block of BENCHMARKS.md, from the figures ``--json`` keeps."""
    sizes = sorted(scale["sizes"].values(), key=lambda m: m["n"])
    lines = [
        START,
        f'On {scale["machine"]} (lscpu model name "{scale["cpu_model"]}"), shared with other '
        "jobs: wall times move with the load, CPU seconds much less. Each stage is its own "
        "process, run as dvc.yaml runs it; CPU s and peak RSS come from `wait4` on it (CPU: "
        "the stage and its decoding workers; peak RSS: the largest single process), tree RSS "
        "is the sum over its process group sampled every 0.2 s (the guard).",
        "",
        "| stage | n | wall s | CPU s | images/s | peak RSS MB | tree RSS MB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in sizes:
        for r in m["rows"]:
            if "wall_s" not in r:
                lines.append(f"| {r['stage']} | {r['n']:,} | | | | | | {r['status']} |")
                continue
            name = r["stage"]
            if name == "yardstick":
                name = f"yardstick: read + sha256 + draft decode, {r['workers']} processes"
            rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else ""
            tree = f"{r['tree_rss_mb']:.0f}" if "tree_rss_mb" in r else ""
            lines.append(
                f"| {name} | {r['n']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
                f"| {r['images_per_s']:.0f} | {rss} | {tree} | {r['status']} |"
            )
        ratio = m.get("ingest_preprocess_vs_yardstick")
        if ratio:
            lines.append(
                f"| ingest + preprocess against the yardstick | {m['n']:,} "
                f"| {ratio['wall']:.1f}× | {ratio['cpu']:.1f}× | | | | target ≤ 1.5× |"
            )
    lines.append("")
    scored = [(m["n"], r) for m in sizes for r in m["rows"] if "accuracy" in r]
    if scored:
        lines += [
            "Evaluate's test accuracy after the one epoch (leak-free in brackets): "
            + ", ".join(
                f"{n:,} images {100 * r['accuracy']:.1f} % "
                f"({100 * r.get('leakfree_accuracy', float('nan')):.1f} %)"
                for n, r in scored
            )
            + ".",
            "",
        ]
    for m in sizes:
        g = m["generate"]
        lines.append(
            f"- {m['n']:,}: measured {m['date']}, commit `{m['commit']}`, "
            f"`{m['command']}`, params conf/ with {' '.join(m['override'])}, guard "
            f"{m['max_rss_gb']:g} GB tree RSS; load average {m['load_before']:.1f} before, "
            f"{m['load_after']:.1f} after. Dataset written outside the timings in "
            f"{g['seconds']:.1f} s ({g['images_per_s']:.0f} images/s, {g['mb']:.0f} MB)."
        )
    lines.append(END)
    return "\n".join(lines)


def ratio(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """(ingest + preprocess) / yardstick, in wall and in CPU time, when all three finished."""
    by = {r["stage"]: r for r in rows}
    if any(by.get(s, {}).get("status") != "ok" for s in ("ingest", "preprocess", "yardstick")):
        return None
    return {
        k: (by["ingest"][f"{k}_s"] + by["preprocess"][f"{k}_s"]) / by["yardstick"][f"{k}_s"]
        for k in ("wall", "cpu")
    }


def parse_sizes(text: str) -> list[tuple[int, list[str]]]:
    """``1000,10000,100000:ingest`` -> sizes with their stages (all four by default)."""
    out = []
    for item in text.split(","):
        n, _, stages = item.partition(":")
        names = stages.split("+") if stages else list(STAGES)
        unknown = set(names) - set(STAGES)
        if unknown:
            raise SystemExit(f"bench-scale: unknown stage(s) {sorted(unknown)}; know {STAGES}")
        out.append((int(n.replace("_", "")), names))
    return out


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000", help="e.g. 1000,10000,100000:ingest")
    p.add_argument("--seed", type=int, default=0, help="the synthetic datasets' seed")
    p.add_argument(
        "--override",
        nargs="*",
        default=["train.epochs=1"],
        help="Hydra overrides for the params file (default: train.epochs=1)",
    )
    p.add_argument("--max-rss-gb", type=float, default=6.0, help="per-stage tree RSS guard")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per stage")
    p.add_argument("--workdir", type=Path, default=None, help="where the temp projects go")
    p.add_argument("--keep", action="store_true", help="keep the temp projects (and logs)")
    p.add_argument("--json", type=Path, default=None, help="merge the figures in, as `scale`")
    p.add_argument("--markdown", type=Path, default=None, help="rewrite its bench-scale block")
    args = p.parse_args()

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.getenv("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("DVC_ROOT", None)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="imgclf-bench-scale-", dir=args.workdir))
    measured: dict[str, Any] = {}
    try:
        for n, stages in parse_sizes(args.sizes):
            load_before = os.getloadavg()[0]
            gen, rows = measure_size(n, stages, work, env, args)
            measured[str(n)] = {
                "n": n,
                "date": dt.date.today().isoformat(),
                "commit": commit,
                "command": f"scripts/bench_scale.py --sizes {args.sizes}",
                "override": args.override,
                "max_rss_gb": args.max_rss_gb,
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
                "generate": gen,
                "rows": rows,
                "ingest_preprocess_vs_yardstick": ratio(rows),
            }
            if not args.keep:
                shutil.rmtree(work / f"n{n}", ignore_errors=True)
    finally:
        if args.keep:
            print(f"bench-scale: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    # Sizes measured by an earlier run stay (each with its own date and commit): a long size
    # (100k) can be measured on its own.
    earlier = {}
    if args.json and args.json.is_file():
        earlier = (
            json.loads(args.json.read_text(encoding="utf-8")).get("scale", {}).get("sizes", {})
        )
    scale = {
        "machine": f"{os.cpu_count()} cores",
        "cpu_model": cpu_model(),
        "sizes": earlier | measured,
    }
    block = render(scale)
    print(block)
    if args.json:
        bench_cv.write_json(args.json, {"scale": scale})
        print(f"bench-scale: merged into {args.json} as `scale`")
    if args.markdown:
        write_benchmarks(args.markdown, block, START, END)
        print(f"bench-scale: rewrote the bench-scale block of {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
