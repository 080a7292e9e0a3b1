"""Rerun the ``numerics`` tests under every oneDNN instruction-set level this host reaches.

TensorFlow's oneDNN picks its kernels by instruction set at run time, so the same seed trains
different weights on an AVX2 Zen 3, an AVX-512 Zen 4 and an AMX Xeon. ``ONEDNN_MAX_CPU_ISA``
caps that choice downward only: an AVX-512 host can also run the AVX2 and SSE4.1 code paths,
no host can run a level its CPU lacks. CI (``CI=true make test``) runs this after the suite::

    python -m tests.isa                 # probe every level, then pytest -m numerics per kernel set
    python -m tests.isa --probe-only    # the table only
    python -m tests.isa --include-host  # also rerun the uncapped level (make test already ran it)

1. A level whose /proc/cpuinfo flags the host lacks is listed as not reachable here.
2. One child per reachable level, and one uncapped, trains two steps of the project's plain and
   residual models with ``ONEDNN_VERBOSE=1``: oneDNN prints the ISA it settled on and every
   kernel it ran.
3. Levels whose children ran the same kernels share one pytest run, capped at the highest of
   them (float32 training runs the same ``avx512_core`` kernels under AVX512_CORE, _VNNI and
   _BF16: those levels add int8 and bfloat16 instructions). The uncapped kernel set is the one
   ``make test`` itself ran, so it is not run twice.

oneDNN is the only library the cap reaches: ONNX Runtime (MLAS) and TFLite (XNNPACK), used by
the export parity checks, pick their kernels by CPU on their own and run the host's widest.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imgclf.host import cpu_flags

ROOT = Path(__file__).resolve().parents[1]

_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
# oneDNN 3.7's ONEDNN_MAX_CPU_ISA names (TensorFlow 2.21), narrowest first, with the cpuinfo
# flags each needs. An unknown name is ignored by oneDNN without a word, so only these are used.
LEVELS: dict[str, tuple[str, ...]] = {
    "SSE41": ("sse4_1",),
    "AVX": ("avx",),
    "AVX2": ("avx2", "fma"),
    "AVX2_VNNI": ("avx2", "fma", "avx_vnni"),
    "AVX512_CORE": _AVX512,
    "AVX512_CORE_VNNI": (*_AVX512, "avx512_vnni"),
    "AVX512_CORE_BF16": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_FP16": (*_AVX512, "avx512_vnni", "avx512_bf16", "avx512_fp16"),
    "AVX512_CORE_AMX": (*_AVX512, "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"),
}
HOST = "host"  # the uncapped row

PROBE = """
import numpy as np
from imgclf.compose import compose_config
from imgclf.model import build_model, compile_model
for block in ("plain", "residual"):
    cfg = compose_config(overrides=[f"model.block={block}", "model.blocks=2", "model.filters=8",
                                    "augment=none", "train.batch_size=4"])
    model = compile_model(build_model(cfg.model, (32, 48, 3), 3), cfg.optimizer, cfg.train, 2)
    x = np.random.default_rng(0).integers(0, 255, (8, 32, 48, 3), dtype=np.uint8)
    model.fit(x, np.eye(3)[np.arange(8) % 3], batch_size=4, epochs=1, verbose=0)
"""


@dataclass
class Level:
    """One ISA cap: whether the CPU has it, what oneDNN made of it, the pytest run's outcome."""

    name: str
    reachable: bool
    isa: str = ""  # oneDNN's own words, e.g. "Intel AVX2"
    kernels: frozenset[str] = frozenset()
    probe_error: str = ""
    same_as: str = ""  # a higher level that ran the same kernels and stands for this one
    result: str = ""
    failed: bool = False


def _env(cap: str | None, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    }
    env.update(TF_CPP_MIN_LOG_LEVEL="3", **extra)
    if cap is not None:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    return env


def probe(level: Level) -> None:
    """Train two steps under ``level``'s cap; record oneDNN's ISA and the kernels it ran."""
    cap = None if level.name == HOST else level.name
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=_env(cap, ONEDNN_VERBOSE="1"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    text = proc.stdout + proc.stderr
    found = re.search(r"info,cpu,isa:([^\n]+)", text)
    level.isa = found.group(1).strip() if found else "?"
    ran = re.findall(r",exec,cpu,(\w+),([^,]+),", text)
    level.kernels = frozenset(f"{kind}:{impl}" for kind, impl in ran)
    if proc.returncode != 0:
        level.probe_error = f"probe exit {proc.returncode}: {text.strip().splitlines()[-1:]}"


def run_numerics(cap: str | None, pytest_args: list[str]) -> tuple[bool, str]:
    """``pytest -m numerics`` under ``cap``; (passed, pytest's last line)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "numerics", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, *pytest_args], env=_env(cap), cwd=ROOT, capture_output=True, text=True
    )
    sys.stdout.write(proc.stdout[-20000:] if proc.returncode else "")
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1].strip("= ")
    return proc.returncode == 0, last


def table(levels: list[Level]) -> str:
    lines = [
        "| ONEDNN_MAX_CPU_ISA | oneDNN ran | numerics tests |",
        "|---|---|---|",
    ]
    for lv in levels:
        label = "(none: the host's own)" if lv.name == HOST else lv.name
        if not lv.reachable:
            lines.append(f"| {label} | - | not reachable: this CPU lacks it |")
            continue
        if lv.probe_error:
            outcome = f"FAILED: {lv.probe_error}"
        elif lv.same_as:
            outcome = f"covered by {lv.same_as} (the same kernels)"
        else:
            outcome = lv.result
        lines.append(f"| {label} | {lv.isa} | {outcome} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-only", action="store_true", help="print the table, run no tests")
    parser.add_argument("--include-host", action="store_true", help="rerun the uncapped level")
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = pytest_args or ["-n", "2", "--dist", "loadscope"]
    started = time.perf_counter()
    flags = cpu_flags()
    levels = [Level(name, all(f in flags for f in need)) for name, need in LEVELS.items()]
    levels.append(Level(HOST, True))
    with ThreadPoolExecutor(max_workers=2) as pool:  # a probe is one mostly single-core child
        list(pool.map(probe, [lv for lv in levels if lv.reachable]))
    # Widest first: a level that ran the kernels of a wider one is stood for by it.
    by_kernels: dict[frozenset[str], Level] = {}
    for lv in reversed(levels):
        if not lv.reachable or lv.probe_error:
            continue
        first = by_kernels.setdefault(lv.kernels, lv)
        if first is not lv:
            lv.same_as = first.name if first.name != HOST else "the host's own run"
    failed = any(lv.probe_error for lv in levels)
    for lv in by_kernels.values():
        if args.probe_only:
            lv.result = "not run (--probe-only)"
            continue
        if lv.name == HOST and not args.include_host:
            lv.result = "make test's own run (uncapped)"
            continue
        print(f"numerics tests under ONEDNN_MAX_CPU_ISA={lv.name} ({lv.isa}) ...", flush=True)
        ok, last = run_numerics(None if lv.name == HOST else lv.name, pytest_args)
        lv.result = last if ok else f"FAILED: {last}"
        failed |= not ok
    covered = [lv.name for lv in levels if lv.reachable and not lv.probe_error and lv.name != HOST]
    missing = [lv.name for lv in levels if not lv.reachable]
    print()
    print(table(levels))
    print(
        f"\nISA levels covered on this host: {', '.join(covered) or 'none'}"
        f"; not reachable here: {', '.join(missing) or 'none'}"
        f" ({time.perf_counter() - started:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
