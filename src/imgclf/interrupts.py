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
from collections.abc import Iterator

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
