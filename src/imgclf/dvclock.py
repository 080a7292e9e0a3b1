"""Diagnose DVC's locks after a killed ``dvc repro`` and say how to recover.

DVC 3 keeps two locks in ``.dvc/tmp``: ``lock`` (an OS file lock, released by the kernel when
its holder dies, so it cannot go stale) and ``rwlock`` (a JSON list of the pids using each
output). DVC skips rwlock entries whose pid is dead, but a killed run's pid can be reused by an
unrelated process, and then every ``dvc repro`` fails with "is busy". This module tells the two
cases apart by looking at what each pid is running now.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LockHolder:
    pid: int
    recorded_cmd: str  # what DVC wrote when it took the lock
    running_cmd: str | None  # what that pid runs now; None when no such process

    @property
    def is_live_dvc(self) -> bool:
        """Whether the pid is still a DVC process (then the lock is real, not stale)."""
        return self.running_cmd is not None and "dvc" in self.running_cmd


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"  # alive, but no /proc to say what it is (macOS)
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def rwlock_holders(dvc_dir: Path) -> list[LockHolder]:
    """Every pid recorded in ``.dvc/tmp/rwlock``, with what it runs now."""
    path = dvc_dir / "tmp" / "rwlock"
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return []
    entries = list(info.get("write", {}).values())
    for readers in info.get("read", {}).values():
        entries += readers
    seen: dict[int, LockHolder] = {}
    for e in entries:
        pid = int(e.get("pid", 0))
        if pid and pid not in seen:
            seen[pid] = LockHolder(pid, str(e.get("cmd", "")), _cmdline(pid))
    return list(seen.values())


def repo_lock_holder(dvc_dir: Path) -> int | None:
    """The pid holding ``.dvc/tmp/lock`` right now, or None when it is free."""
    path = dvc_dir / "tmp" / "lock"
    if not path.exists():
        return None
    with path.open("r") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def diagnose(root: Path, *, fix: bool = False) -> tuple[bool, list[str]]:
    """Check the DVC locks of the project at ``root``; with ``fix``, remove a stale rwlock.

    Returns:
        ``(ok, lines)``: ok when ``dvc repro`` can run now; lines say what was found and what
        to do.
    """
    dvc_dir = root / ".dvc"
    lines: list[str] = []
    ok = True
    holder = repo_lock_holder(dvc_dir)
    if holder is not None:
        ok = False
        lines.append(
            f"DVC is running (pid {holder} holds .dvc/tmp/lock): wait for it to "
            f"finish, or stop it with `kill {holder}`. This lock frees itself when "
            "its process ends."
        )
    holders = rwlock_holders(dvc_dir)
    live = [h for h in holders if h.is_live_dvc]
    stale = [h for h in holders if not h.is_live_dvc and h.running_cmd is not None]
    for h in live:
        ok = False
        lines.append(
            f"DVC pid {h.pid} ({h.running_cmd}) is still using the pipeline's "
            f"outputs: wait for it, or stop it with `kill {h.pid}`, then rerun."
        )
    if stale and not live:
        rwlock = dvc_dir / "tmp" / "rwlock"
        desc = ", ".join(f"pid {h.pid} now runs `{h.running_cmd}`" for h in stale)
        if fix:
            with contextlib.suppress(FileNotFoundError):
                rwlock.unlink()
            lines.append(
                f"Removed the stale {rwlock.relative_to(root)} left by a killed "
                f"`{stale[0].recorded_cmd}` ({desc}, not DVC)."
            )
        else:
            ok = False
            lines.append(
                f"Stale DVC lock: {rwlock.relative_to(root)} was left by a killed "
                f"`{stale[0].recorded_cmd}` and its pid was reused ({desc}, not DVC). "
                f"Recover with `imgclf doctor --fix` (or `rm {rwlock.relative_to(root)}`)"
                ", then `make repro`; an interrupted train resumes from its last "
                "finished epoch."
            )
    if ok and not lines:
        lines.append("DVC locks are free: `dvc repro` can run.")
    return ok, lines
