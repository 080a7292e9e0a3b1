"""Deliver SIGINT/SIGTERM between tracking-store calls, never in the middle of one.

An exception raised by a signal handler lands on whatever bytecode runs at that moment. When
that is inside MLflow's SQLAlchemy session (a write transaction half done), the connection can
be left holding SQLite's write lock, and the run-status update that follows in the same process
then fails with "database is locked": the run would stay RUNNING. The CLI's handlers therefore
call :func:`request`, which raises at once outside a :func:`shielded` block and otherwise when
the outermost block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_depth = 0
_pending: BaseException | None = None


def request(exc: BaseException) -> None:
    """Raise ``exc`` now, or when the current shielded block ends."""
    global _pending
    if _depth:
        _pending = _pending or exc
        return
    raise exc


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold signal-raised exceptions until the block is done (blocks may nest)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            exc, _pending = _pending, None
            raise exc


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so that open MLflow runs unwind and end KILLED.

    Python's default SIGTERM action kills the process without running ``finally`` blocks,
    which would leave the run RUNNING. It subclasses KeyboardInterrupt so every handler of
    Ctrl-C treats it alike.
    """


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM


def exit_status(exc: KeyboardInterrupt) -> tuple[int, str]:
    """How a door ends on Ctrl-C or SIGTERM: its exit status and the words of its one line."""
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, "terminated (SIGTERM)"
    return EXIT_INTERRUPTED, "interrupted"


def _on_sigterm(signum: int, _frame: Any) -> None:
    # Further SIGTERMs while unwinding would interrupt the status update; SIGKILL still works.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    request(Terminated(f"signal {signum}"))


def _on_sigint(_signum: int, _frame: Any) -> None:
    request(KeyboardInterrupt())


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated`, SIGINT KeyboardInterrupt, both via :func:`request`.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
