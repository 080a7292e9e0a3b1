"""Run one call in a fresh child process: a native crash there is an exception here.

Every training job runs in a child forked from a server process that has already imported
TensorFlow (multiprocessing's ``forkserver`` with a preload), so:

- a segfault or abort inside TensorFlow's native code (oneDNN kernels differ per CPU) kills the
  child only: the job raises :class:`NativeCrashError`, its run ends FAILED, an Optuna trial is
  told FAIL and the sweep goes on;
- the memory TensorFlow keeps after a fit goes back to the system with the child, so a
  worker's memory stays flat over any number of jobs, whatever the launcher;
- a child costs a fork, not a fresh TensorFlow import (tenths of a second, not seconds).

The child takes the caller's environment and working folder at each call (the server was
forked earlier, perhaps under another job's ``hydra.job.env_set``), and kills itself if the
caller dies, so a SIGKILLed sweep leaves no training running.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

_POLL_S = 0.5


class NativeCrashError(RuntimeError):
    """The child process died from a signal or exited without a result (a native crash)."""


def call_in_child(
    fn: Callable[..., Any], *args: Any, preload: Sequence[str] = (), name: str = "imgclf-job"
) -> Any:
    """``fn(*args)`` in a child process; its return value, or its exception re-raised here.

    ``fn`` and ``args`` must pickle (a module-level function). ``preload`` lists the modules the
    fork server imports once, before the first child (only the first call's list counts).

    Raises:
        NativeCrashError: the child died from a signal (SIGSEGV, SIGABRT...) or vanished.
    """
    ctx = multiprocessing.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload(list(preload))
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child_main,
        args=(writer, fn, args, dict(os.environ), os.getcwd()),
        name=name,
    )
    child.start()
    writer.close()
    try:
        message = _wait(reader, child)
    except BaseException:  # Ctrl-C, SIGTERM: the child goes with us
        _stop(child)
        raise
    finally:
        reader.close()
    child.join()
    if message is None:
        raise NativeCrashError(_death(child.exitcode))
    kind, payload = message
    if kind == "error":
        raise payload
    return payload


def _wait(reader: Any, child: Any) -> tuple[str, Any] | None:
    """The child's one message, or None when it died without sending it."""
    while True:
        ready = multiprocessing.connection.wait([reader, child.sentinel], timeout=_POLL_S)
        if reader in ready:
            try:
                return reader.recv()  # type: ignore[no-any-return]
            except EOFError:
                return None
        if child.sentinel in ready:
            # Exited: a message it sent just before is still in the pipe.
            return reader.recv() if reader.poll(0) else None  # type: ignore[no-any-return]


def _stop(child: Any) -> None:
    if child.is_alive():
        child.terminate()
        child.join(10)
    if child.is_alive():
        child.kill()
        child.join()


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        return (
            f"the training process died from {sig} (a crash in native code, e.g. a TensorFlow "
            "kernel on this CPU); try TF_ENABLE_ONEDNN_OPTS=0 to tell whether oneDNN is the cause"
        )
    return f"the training process exited with code {code} without a result"


def _child_main(
    conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], env: dict[str, str], cwd: str
) -> None:
    _die_with_parent()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        result = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the caller
        _send(conn, ("error", exc))
    else:
        _send(conn, ("ok", result))
    finally:
        conn.close()


def _send(conn: Any, message: tuple[str, Any]) -> None:
    try:
        conn.send(message)
    except Exception as exc:  # noqa: BLE001 - an unpicklable exception: send its text
        log.debug("could not send %r back: %s", message[1], exc)
        conn.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}")))


def _die_with_parent() -> None:
    """Kill this child when the process that asked for it dies (SIGKILL leaves no handler)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
