"""A process pool sized for the machine, for decoding many images (all at once, or streamed in
bounded chunks)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def map_in_chunks(
    fn: Callable[..., T], items: Sequence[Any], chunk_size: int, workers: int = 0
) -> Iterator[list[T]]:
    """:func:`map_in_processes` over ``items`` ``chunk_size`` at a time, yielding each chunk's
    results in order: one pool for all chunks, and at most one chunk's results held here."""
    n = min(worker_count(workers), max(1, len(items)))
    chunks = (items[i : i + chunk_size] for i in range(0, len(items), chunk_size))
    if n == 1 or len(items) < 16:
        for chunk in chunks:
            yield [fn(x) for x in chunk]
        return
    with ProcessPoolExecutor(max_workers=n) as pool:
        for chunk in chunks:
            yield list(pool.map(fn, chunk, chunksize=max(1, len(chunk) // (n * 8))))
