"""Which CPU produced a result: trained weights and metrics depend on it.

TensorFlow picks its kernels (oneDNN, the SIMD instruction sets) by CPU, and floating-point sums
in another order round differently: the same commit and seed give identical numbers on one host
and different ones on another (BENCHMARKS.md measures how far apart). Every metrics file and run
therefore names the CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The instruction sets that change which kernels TensorFlow and oneDNN run, widest last.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (``avx2``, ``avx512f``...)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    """``AuthenticAMD``, ``GenuineIntel``...: /proc/cpuinfo's ``vendor_id`` ("" where none)."""
    return _cpuinfo().get("vendor_id", "")


def host_cpu() -> str:
    """``"<model name> (<SIMD flags>)"`` from /proc/cpuinfo, e.g. ``AMD EPYC (sse4_2 avx avx2
    fma)``; elsewhere what :func:`platform.processor` says. A cap on oneDNN's instruction set
    (``ONEDNN_MAX_CPU_ISA``) changes the kernels too, so it is named when set."""
    fallback = platform.processor() or platform.machine() or "unknown"
    model = _cpuinfo().get("model name") or fallback
    simd = [f for f in SIMD_FLAGS if f in cpu_flags()]
    text = f"{model} ({' '.join(simd)})" if simd else model
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    return f"{text}, ONEDNN_MAX_CPU_ISA={cap}" if cap else text


# The metrics that decide a comparison (imgclf summary's first rows), as the note names them.
DECIDING = (("leak-free accuracy", "leakfree_accuracy"), ("accuracy", "accuracy"))


def other_host_note(
    committed: Mapping[str, Any], current: Mapping[str, Any], cv: Mapping[str, Any] | None
) -> str:
    """Two lines when ``current`` metrics come from another CPU than the ``committed`` ones
    (their ``host_cpu``); ``""`` when the same CPU (or an unnamed one) made both.

    Args:
        cv: ``benchmarks.json``: its grouped cross-validation figure is what carries across
            hosts (``None`` where there is none).
    """
    was, now = committed.get("host_cpu"), current.get("host_cpu")
    if not was or not now or was == now:
        return ""
    moves = []
    for label, key in DECIDING:
        a, b = current.get(key), committed.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            moves.append(f"{label} {a:.3f} against {b:.3f} ({100 * (a - b):+.1f} points)")
    if cv and isinstance(cv.get("cv_default_accuracy"), int | float):
        low, high = cv.get("cv_default_ci95_low", 0.0), cv.get("cv_default_ci95_high", 0.0)
        figure = (
            f"BENCHMARKS.md's cross-validated {100 * cv['cv_default_accuracy']:.1f} % "
            f"[{100 * low:.1f}, {100 * high:.1f}] ({cv.get('cv_n', '?')} files, "
            f"{cv.get('cv_folds', '?')} grouped folds)"
        )
    else:
        figure = "BENCHMARKS.md's cross-validated figure"
    return (
        f"Another CPU: the committed metrics come from {was}, these from {now}: "
        f"{'; '.join(moves) or 'no deciding metric to compare'}.\n"
        "Its kernels round differently, so one run's numbers move and git shows the outputs "
        f"changed; that is expected, not a fault. What carries across hosts is {figure}."
    )
