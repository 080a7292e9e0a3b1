"""A process pool sized for the machine, for decoding many images."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def worker_count(requested: int = 0) -> int:
    """``requested`` if positive, else the CPUs this process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def map_in_processes(fn: Callable[..., T], items: Iterable[Any], workers: int = 0) -> list[T]:
    """``[fn(x) for x in items]`` across processes, order kept; in-process for one worker."""
    items = list(items)
    n = min(worker_count(workers), max(1, len(items)))
    if n == 1 or len(items) < 16:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (n * 8))))
