"""Where per-file work runs: a process pool on this machine, or a Dask cluster.

Ingest and preprocess decode every file once; that work is a pure function of one file, so it
runs anywhere and in any order. ``data.engine: local`` (the default) uses a process pool of
``data.workers`` processes; ``data.engine: dask`` sends chunks of files to the Dask cluster at
``data.dask_scheduler`` (``tcp://host:8786``), or to a LocalCluster it starts on this machine
when that is empty. Results come back in input order, never completion order, so both engines
write byte-identical outputs (tests/integration/test_dask_engine.py). Paths go to Dask workers
absolute: the workers must see the data at the same path (a shared filesystem) and run the
same imgclf (docs/team-setup.md). Training stays on one node.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from imgclf.config import ENGINES
from imgclf.errors import ImgclfError

if TYPE_CHECKING:
    from imgclf.config import DataConfig

T = TypeVar("T")

DASK_CHUNK = 256  # files per Dask task: enough work to amortise a round trip to the scheduler
CONNECT_TIMEOUT = "10s"


class EngineError(ImgclfError, RuntimeError):
    """The configured engine cannot run (no scheduler at the address, Dask not installed)."""


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
    return [r for chunk in _local_chunks(fn, items, max(1, len(items)), workers) for r in chunk]


def _local_chunks(
    fn: Callable[..., T], items: Sequence[Any], chunk_size: int, workers: int
) -> Iterator[list[T]]:
    """Each ``chunk_size`` of ``items`` mapped by one process pool (in-process for one worker or
    a handful of items), in order."""
    chunks = (items[i : i + chunk_size] for i in range(0, len(items), chunk_size))
    n = min(worker_count(workers), max(1, len(items)))
    if n == 1 or len(items) < 16:
        for chunk in chunks:
            yield [fn(x) for x in chunk]
        return
    with ProcessPoolExecutor(max_workers=n) as pool:
        for chunk in chunks:
            yield list(pool.map(fn, chunk, chunksize=max(1, len(chunk) // (n * 8))))


@dataclass(frozen=True)
class Engine:
    """Where :func:`map_files` runs: ``local`` (``workers`` processes) or ``dask``."""

    name: str = "local"
    workers: int = 0
    scheduler: str = ""  # dask: the scheduler's address; "" starts a LocalCluster here

    @classmethod
    def of(cls, data: DataConfig) -> Engine:
        return cls(data.engine, data.workers, data.dask_scheduler)


def map_files(fn: Callable[[Path], T], paths: Sequence[Path], engine: Engine) -> list[T]:
    """``[fn(p) for p in paths]`` on ``engine``, in the order of ``paths``."""
    if engine.name == "local":
        return map_in_processes(fn, paths, engine.workers)
    if engine.name != "dask":
        raise EngineError(f"data.engine: unknown engine {engine.name!r}: use one of {ENGINES}")
    client = _dask_client(engine.scheduler, worker_count(engine.workers))
    absolute = [Path(p).resolve() for p in paths]
    chunks = [absolute[i : i + DASK_CHUNK] for i in range(0, len(absolute), DASK_CHUNK)]
    # pure=False: a rerun on a cluster that still holds old results recomputes them
    futures = client.map(functools.partial(_apply, fn), chunks, pure=False)
    return [result for chunk in client.gather(futures) for result in chunk]


def map_files_in_chunks(
    fn: Callable[[Path], T], paths: Sequence[Path], chunk_size: int, engine: Engine
) -> Iterator[list[T]]:
    """:func:`map_files` over ``paths`` ``chunk_size`` at a time, yielding each chunk's results
    in order: one pool (or client) for all chunks, at most one chunk's results held here."""
    if engine.name == "local":
        yield from _local_chunks(fn, paths, chunk_size, engine.workers)
        return
    for i in range(0, len(paths), chunk_size):
        yield map_files(fn, paths[i : i + chunk_size], engine)


def _apply(fn: Callable[[Path], T], chunk: list[Path]) -> list[T]:
    return [fn(p) for p in chunk]


_CLIENTS: dict[tuple[str, int], Any] = {}  # one client per scheduler per process
_CLUSTERS: list[Any] = []  # the LocalClusters this process started


def _dask_client(scheduler: str, local_workers: int) -> Any:
    """The process's client of ``scheduler`` (a LocalCluster of its own when empty)."""
    key = (scheduler, local_workers)
    if key in _CLIENTS:
        return _CLIENTS[key]
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise EngineError(f"data.engine=dask needs dask.distributed: {exc}") from exc
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise EngineError(
                f"data.dask_scheduler {scheduler}: no Dask scheduler answered "
                f"({type(exc).__name__}); start one (`dask scheduler`) or set data.engine=local"
            ) from exc
    else:
        cluster = LocalCluster(
            n_workers=local_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        _CLUSTERS.append(cluster)
        client = Client(cluster, set_as_default=False)
    if not _CLIENTS:  # the first one: close them all at exit (close_engines is idempotent)
        atexit.register(close_engines)
    _CLIENTS[key] = client
    return client


def close_engines() -> None:
    """Close this process's Dask clients and the LocalClusters it started (also at exit)."""
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()
    while _CLUSTERS:
        _CLUSTERS.pop().close()
