"""The model being served: swapped whole on reload, and called in batches.

Promotion without a restart: :meth:`ModelHolder.reload` loads the new ``@champion`` through
:func:`imgclf.predict.load_model` (the same sha256 verification as at start-up) in a thread,
then swaps one reference. A request takes the reference once, when it starts, and uses that
model to the end, so requests in flight finish on the old model and none is dropped; the old
model is freed with its last request. A failed reload keeps the old model serving.

:class:`Batcher` runs the model in one thread, on every image waiting at that moment (up to
``max_batch``): under load, concurrent requests share one call of the model, which costs little
more than a call on one image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
import numpy as np

from imgclf.predict import LoadedModel, load_model

log = logging.getLogger(__name__)


def registry_version(spec: str) -> str | None:
    """The version a ``models:/NAME@ALIAS`` spec points at now (None for anything else)."""
    if not spec.startswith("models:/") or "@" not in spec:
        return None
    from imgclf import registry, tracking

    tracking.configure()
    return str(registry.resolve(spec).version)


def served_version(loaded: LoadedModel) -> str | None:
    """The registry version of a loaded model (``models:/NAME/VERSION``), else None."""
    if loaded.source.startswith("models:/"):
        return loaded.source.rsplit("/", 1)[-1]
    return None


class ModelHolder:
    def __init__(
        self,
        spec: str,
        fmt: str | None,
        loaded: LoadedModel,
        loader: Callable[[str, str | None], LoadedModel] = load_model,
    ) -> None:
        self.spec = spec
        self.fmt = fmt
        self.current = loaded
        self.loaded_at = time.time()
        self._loader = loader
        self._lock: asyncio.Lock | None = None

    def describe(self) -> dict[str, Any]:
        m = self.current
        return {
            "model": m.source,
            "version": served_version(m),
            "format": m.format,
            "classes": m.classes,
            "input": {"height": m.height, "width": m.width, "fit": m.fit},
        }

    async def reload(self, why: str, only_if_moved: bool = False) -> dict[str, Any]:
        """Load the spec again (verified) and swap it in; one reload at a time.

        Args:
            only_if_moved: skip when a registry alias still points at the version served.

        Returns:
            ``{"reloaded": bool, "previous": ..., "model": ...}``.

        Raises:
            Exception: whatever loading raised; the old model keeps serving.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            previous = self.current.source
            if only_if_moved:
                now = await anyio.to_thread.run_sync(registry_version, self.spec)
                if now is None or now == served_version(self.current):
                    return {"reloaded": False, "previous": previous, "model": previous}
            new = await anyio.to_thread.run_sync(self._loader, self.spec, self.fmt)
            self.current, self.loaded_at = new, time.time()
        log.info("reloaded %s (%s): %s -> %s", self.spec, why, previous, new.source)
        return {"reloaded": True, "previous": previous, "model": new.source}


class Batcher:
    """Runs ``predictor.predict`` in a worker thread on the images waiting, in arrival order."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._pending: deque[tuple[LoadedModel, np.ndarray, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.calls = 0
        self.images = 0

    def start(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imgclf-model")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="imgclf-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    async def predict(self, loaded: LoadedModel, image: np.ndarray) -> np.ndarray:
        """The model's probabilities for one prepared image."""
        assert self._wake is not None, "Batcher.start() first"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((loaded, image, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # One call per run of requests for the same model object (a reload in between
                # starts a new batch: each request is answered by the model it started with).
                model = self._pending[0][0]
                batch: list[tuple[LoadedModel, np.ndarray, asyncio.Future]] = []
                while self._pending and len(batch) < self.max_batch:
                    if self._pending[0][0] is not model:
                        break
                    batch.append(self._pending.popleft())
                x = np.stack([b[1] for b in batch])
                try:
                    probs = await loop.run_in_executor(self._thread, model.predictor.predict, x)
                except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.calls += 1
                self.images += len(batch)
                for (*_, fut), row in zip(batch, probs, strict=True):
                    if not fut.done():
                        fut.set_result(row)
