"""Which CPU produced a result: trained weights and metrics depend on it.

TensorFlow picks its kernels (oneDNN, the SIMD instruction sets) by CPU, and floating-point sums
in another order round differently: the same commit and seed give identical numbers on one host
and different ones on another (BENCHMARKS.md measures how far apart). Every metrics file and run
therefore names the CPU.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# The instruction sets that change which kernels TensorFlow and oneDNN run, widest last.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


@functools.cache
def host_cpu() -> str:
    """``"<model name> (<SIMD flags>)"`` from /proc/cpuinfo, e.g. ``AMD EPYC (sse4_2 avx avx2
    fma)``; elsewhere what :func:`platform.processor` says."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    flags = set(fields.get("flags", "").split())
    simd = [f for f in SIMD_FLAGS if f in flags]
    return f"{model} ({' '.join(simd)})" if simd else model
