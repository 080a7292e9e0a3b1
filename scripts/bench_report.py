"""The table ``make bench`` (scripts/bench.py) writes into BENCHMARKS.md, from its results."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def spread(xs: list[float]) -> str:
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * mean:.1f} % ± {100 * sd:.1f} (min {100 * min(xs):.1f})"


def render(results: dict[str, Any]) -> str:
    """The generated block of BENCHMARKS.md."""
    from imgclf.artifacts import FORMAT_FILES

    r = results
    lines = [
        START,
        f"Measured {r['date']} on {r['machine']}, commit `{r['commit']}`, "
        f"{len(r['seeds'])} seeds ({', '.join(map(str, r['seeds']))}), by `make bench`. The "
        "accuracy rows score one train-stage model per seed on the test set: its 150 files are "
        "few and most have a training twin; the cross-validation block below is the precise, "
        "leak-free figure.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
    ]
    for row in r["accuracy"]:
        lines.append(
            f"| {row['label']}: Testing_Data accuracy (150 files, {150 - r['n_leakfree']} with a "
            f"twin in training: partly memorisation) | {spread(row['acc'])} | "
            f"{'≥ 99 %' if row['label'].startswith('default') else 'baseline'} |"
        )
        lines.append(
            f"| {row['label']}: Testing_Data `leakfree_accuracy` ({r['n_leakfree']} files) | "
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
        f"| `imgclf predict` one file, `--model {FORMAT_FILES['onnx']}` | "
        f"{r['one_file']['onnx']:.2f} s | ≤ 3 s |",
        f"| `imgclf predict` one file, `--model {FORMAT_FILES['h5']}` (imports TensorFlow) | "
        f"{r['one_file']['h5']:.2f} s | |",
        f"| `imgclf predict` one file, `{r['champion']}` (imports MLflow) | "
        f"{r['one_file']['registry']:.2f} s | |",
        "",
        "Stage times of the full repro: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())
        + ".",
        END,
    ]
    return "\n".join(lines)


def write_benchmarks(path: Path, block: str, start: str = START, end: str = END) -> None:
    """Replace the generated block between ``start`` and ``end``, keeping the rest of ``path``."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if start not in text or end not in text:
        text = f"{text.rstrip()}\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(head + block.rstrip("\n") + tail, encoding="utf-8")
    os.replace(tmp, path)


def stage_times(log: str) -> dict[str, float]:
    """Parse the ``<stage>: done in N s`` lines the stage doors log."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        if ": done in " in line:
            name, _, rest = line.rpartition(": done in ")
            out[name.split()[-1]] = float(rest.split()[0])
    return out
