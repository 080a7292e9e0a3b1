"""A process whose parent is killed notices it (real processes, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclf import orphans

CHILD = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
time.sleep(600)
"""
# The grandchild: records its chain, says so, and reports what it sees once told to look.
WATCHER = """
import os, sys, time
from pathlib import Path
from imgclf import orphans
folder, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "watch":
    with orphans.watching(poll_s=0.05):
        (folder / "pid").write_text(str(os.getpid()))
        time.sleep(60)  # SIGTERM (default action) ends it once its parent is gone
watch = orphans.parent_watch()
(folder / "pid").write_text(str(os.getpid()))
while not (folder / "go").exists():
    time.sleep(0.02)
(folder / "result").write_text(str(watch.gone()))
"""


def _wait_for(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"timed out waiting for {path.name}"
        time.sleep(0.02)
    return path.read_text()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, WATCHER, str(tmp_path), mode])
    return child, int(_wait_for(tmp_path / "pid"))


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_a_live_parent_is_not_gone(tmp_path: Path):
    child, _ = _start(tmp_path, "look")
    try:
        (tmp_path / "go").touch()
        assert _wait_for(tmp_path / "result") == "None"
    finally:
        child.kill()
        child.wait()


def test_a_killed_parent_is_gone(tmp_path: Path):
    child, _ = _start(tmp_path, "look")
    child.kill()
    child.wait()
    (tmp_path / "go").touch()
    assert _wait_for(tmp_path / "result").startswith(f"parent process {child.pid} exited")


def test_a_watched_orphan_stops_itself(tmp_path: Path):
    child, grandchild = _start(tmp_path, "watch")
    child.kill()
    child.wait()
    deadline = time.monotonic() + 20
    while not _gone(grandchild):
        assert time.monotonic() < deadline, "the orphan is still running"
        time.sleep(0.05)


def test_check_refuses_only_when_the_parent_is_gone(monkeypatch: pytest.MonkeyPatch):
    orphans.check("register")  # not watching: nothing to refuse
    with orphans.watching(poll_s=60):
        orphans.check("register")  # pytest's parent is alive
        me = orphans._Proc(os.getpid(), os.getppid() + 1_000_000, "")
        monkeypatch.setattr(orphans, "_active", orphans.ParentWatch((me,)))
        with pytest.raises(orphans.ParentGone, match="refusing to register as an orphan"):
            orphans.check("register")
