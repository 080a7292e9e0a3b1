"""Bounded memory and work: a byte budget that requests wait on, in the event loop.

A request reserves what it will hold (its body's Content-Length; an image's decoding peak, from
its header) before holding it. Waiting costs no thread: the request's task sleeps in the event
loop until enough is released, or gives up with 503 after ``busy_timeout_s``. A reservation
larger than the whole budget could never be met and is refused at once (413).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class OverBudget(Exception):
    """The reservation exceeds the whole budget: it can never be granted."""


class Busy(Exception):
    """The budget stayed taken by other requests for longer than the wait allowed."""


class ByteBudget:
    """A weighted semaphore over bytes, first come first served."""

    def __init__(self, capacity: int, name: str) -> None:
        self.capacity = capacity
        self.name = name
        self.used = 0
        self.peak = 0
        self._cond: asyncio.Condition | None = None  # made in the running loop

    async def acquire(self, n: int, timeout: float) -> None:
        """Take ``n`` bytes of the budget, waiting up to ``timeout`` seconds.

        Raises:
            OverBudget: ``n`` exceeds the capacity.
            Busy: not granted within ``timeout`` seconds.
        """
        if n > self.capacity:
            raise OverBudget(
                f"needs {n >> 20} MiB of the {self.name} budget of {self.capacity >> 20} MiB"
            )
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: self.used + n <= self.capacity)
            except TimeoutError:
                raise Busy(f"the {self.name} budget stayed in use for {timeout:g} s") from None
            self.used += n
            self.peak = max(self.peak, self.used)

    async def release(self, n: int) -> None:
        assert self._cond is not None
        async with self._cond:
            self.used -= n
            self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def hold(self, n: int, timeout: float) -> AsyncIterator[None]:
        """:meth:`acquire` ``n`` bytes for the duration of the block."""
        await self.acquire(n, timeout)
        try:
            yield
        finally:
            await self.release(n)
