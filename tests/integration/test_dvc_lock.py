"""A really killed ``dvc repro``: the rerun works, and a stale lock gets a recovery message.

A tiny DVC project with one slow stage stands in for the pipeline: the lock behaviour is DVC's,
not the stages'.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclf import cli

DVC = str(Path(sys.executable).with_name("dvc"))

WAIT_STAGE = """
import os, time
open("started", "w").write(str(os.getpid()))
while not os.path.exists("go"):
    time.sleep(0.05)
open("out.txt", "w").write("done")
"""


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DVC, *args], cwd=project, capture_output=True, text=True, timeout=120)


def _wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _writers(rwlock: Path) -> dict:
    try:
        return dict(json.loads(rwlock.read_text()).get("write", {}))
    except (OSError, ValueError):  # not there yet, or being written
        return {}


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "wait.py").write_text(WAIT_STAGE)
    (root / "dvc.yaml").write_text(
        f"stages:\n  slow:\n    cmd: {sys.executable} wait.py\n    deps: [wait.py]\n"
        "    outs: [out.txt]\n"
    )
    assert _dvc(root, "init", "--no-scm", "-q").returncode == 0
    return root


def test_killed_dvc_repro_recovers_and_a_reused_pid_gets_a_recovery_message(project, capsys):
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    repro = subprocess.Popen(
        [DVC, "repro"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: (project / "started").exists() and bool(_writers(rwlock)), "the stage to start"
        )
        stale = json.loads(rwlock.read_text())
        repro.send_signal(signal.SIGKILL)
        assert repro.wait(timeout=30) == -signal.SIGKILL
    finally:
        if repro.poll() is None:
            repro.kill()
    # The stage outlives DVC (an orphan); let it finish as it would.
    orphan = int((project / "started").read_text())
    (project / "go").touch()
    _wait_for(lambda: _pid_gone(orphan), "the orphaned stage")

    # dvc status tells the truth: the stage never completed under DVC.
    status = _dvc(project, "status")
    assert "slow" in status.stdout and "up to date" not in status.stdout
    # The lock names a dead pid: DVC itself skips it, and the doctor agrees.
    assert cli.main(["doctor", "--root", str(project)]) == 0
    assert "DVC locks are free" in capsys.readouterr().out
    assert _dvc(project, "repro").returncode == 0
    assert "up to date" in _dvc(project, "status").stdout

    # The same stale lock, but its pid now belongs to an unrelated process.
    reused = subprocess.Popen(["sleep", "60"])
    try:
        for entry in stale["write"].values():
            entry["pid"] = reused.pid
        rwlock.write_text(json.dumps(stale))
        refused = _dvc(project, "repro", "-f")
        assert refused.returncode != 0 and "is busy" in refused.stderr
        assert cli.main(["doctor", "--root", str(project)]) == 1
        out = capsys.readouterr().out
        assert f"pid {reused.pid} now runs `sleep 60`" in out
        assert "imgclf doctor --fix" in out and "rm .dvc/tmp/rwlock" in out
        assert cli.main(["doctor", "--fix", "--root", str(project)]) == 0
        assert not rwlock.exists()
        assert _dvc(project, "repro", "-f").returncode == 0
    finally:
        reused.kill()
        reused.wait()
