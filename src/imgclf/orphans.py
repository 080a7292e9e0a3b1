"""A stage command whose ``dvc repro`` is gone stops instead of working on as an orphan.

DVC runs a stage's command as its child, in its own process group, and does not end it when it
is killed itself: a ``kill -9`` of ``dvc repro`` (a laptop's OOM killer, a scheduler killing one
pid) leaves the command running. The next ``dvc repro`` then works beside it, and an orphaned
export would register a version, and overwrite outputs, behind DVC's back.

:func:`watching` records the chain of processes from this one up to the ``dvc`` process that
started it (or the direct parent when there is none), and a daemon thread checks it twice a
second: when a process of the chain is gone, it sends this process SIGTERM, which the CLI turns
into an exception that ends the stage (its MLflow run KILLED, its staging folder removed).
:func:`check` is the same test, called right before an irreversible step such as registering a
model version, since Python delivers the signal only between bytecodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

POLL_S = 0.5
_MAX_DEPTH = 8  # dvc is the parent, or the grandparent through a shell that did not exec


class ParentGone(ImgclfError, RuntimeError):
    """The process that started this one (``dvc repro``) is gone: refuse to go on."""


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    started: str  # /proc/<pid>/stat's start time: a reused pid has another one


def _read(pid: int) -> _Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped: its children are already orphans
        return None
    return _Proc(pid, int(fields[1]), fields[19])


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    names = [os.path.basename(a.decode(errors="replace")) for a in argv[:3]]
    return "dvc" in names


@dataclass(frozen=True)
class ParentWatch:
    """The processes from this one up to its supervisor, as they were when it started."""

    chain: tuple[_Proc, ...]

    def gone(self) -> str | None:
        """Which process of the chain is gone or was replaced (None: all are still there)."""
        if os.getppid() != self.chain[0].ppid:
            return f"parent process {self.chain[0].ppid} exited"
        for proc in self.chain[1:]:
            now = _read(proc.pid)
            if now is None or now.started != proc.started:
                return f"process {proc.pid} exited"
            if proc is not self.chain[-1] and now.ppid != proc.ppid:
                return f"process {proc.pid} lost its parent {proc.ppid}"
        return None


def parent_watch() -> ParentWatch:
    """Record the chain from this process up to the ``dvc`` that runs it (else the parent)."""
    me = _Proc(os.getpid(), os.getppid(), "")
    chain = [me]
    pid = me.ppid
    for _ in range(_MAX_DEPTH):
        proc = _read(pid)
        if proc is None:
            break
        chain.append(proc)
        if _is_dvc(pid) or proc.ppid <= 1:
            break
        pid = proc.ppid
    if not any(_is_dvc(p.pid) for p in chain[1:]):
        chain = chain[:2]  # not under DVC: only the direct parent matters
    return ParentWatch(tuple(chain))


_active: ParentWatch | None = None


def check(before: str) -> None:
    """Raise :class:`ParentGone` if the watched supervisor is gone (no-op when not watching)."""
    why = _active.gone() if _active is not None else None
    if why is not None:
        raise ParentGone(f"{why}: refusing to {before} as an orphan; rerun `dvc repro`")


@contextlib.contextmanager
def watching(poll_s: float = POLL_S) -> Iterator[ParentWatch | None]:
    """Watch the supervisor for the block's duration; SIGTERM this process when it is gone.

    Only on Linux (``/proc``); elsewhere the block runs unwatched.
    """
    global _active
    if not Path("/proc/self/stat").exists():
        yield None
        return
    watch = parent_watch()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_s):
            why = watch.gone()
            if why is not None:
                log.error("%s: stopping (an orphan must not go on behind DVC's back)", why)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=poll, name="imgclf-parent-watch", daemon=True)
    _active = watch
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        _active = None
