"""A fresh clone beside ../shared: dvc pull + a short `dvc exp run` on the real data.

Catches what a green working copy hides: a file not committed, a wrong remote path, a dvc.yaml
that names an output or dependency wrongly, params.yaml out of step with conf/.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out, err = proc.stdout[-3000:], proc.stderr[-5000:]
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out}\n{err}"
    return proc.stdout


@pytest.mark.skipif(not (SHARED / "dvc-store").is_dir(), reason="../shared/dvc-store not present")
def test_fresh_clone_pulls_and_reproduces(tmp_path):
    clone = REPO_ROOT.parent / f".imgclf-clone-{uuid.uuid4().hex[:8]}"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # the clone's own code, not the editable install's
        "PYTHONPATH": str(clone / "src"),
        "GIT_AUTHOR_NAME": "imgclf-test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "imgclf-test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    try:
        _run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], REPO_ROOT.parent, env)
        _run(["dvc", "pull", "data.dvc"], clone, env)
        n_files = sum(1 for p in (clone / "data" / "id-cards").rglob("*") if p.is_file())
        assert n_files == 750
        _run(
            [
                "dvc",
                "exp",
                "run",
                "-S",
                "train.epochs=2",
                "-S",
                "data.image_height=48",
                "-S",
                "data.image_width=72",
                "-S",
                "optimizer=sgd",
            ],
            clone,
            env,
        )
        metrics = json.loads((clone / "artifacts" / "evaluate" / "metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n_test"] == 150
        assert json.loads(_run(["dvc", "status", "--json"], clone, env)) == {}
        registered = json.loads((clone / "artifacts" / "export" / "registered.json").read_text())
        assert registered["version"] == "1"
        # The run went to the clone's own store, tagged with the experiment's name.
        db = sqlite3.connect(clone / "mlruns" / "mlflow.db")
        tags = dict(
            db.execute(
                "SELECT key, value FROM tags WHERE run_uuid = ?", (registered["run_id"],)
            ).fetchall()
        )
        db.close()
        assert tags.get("dvc_exp_name")
        assert tags.get("data_md5") == "8f325fb89260180ff3e41cf11862d9c2.dir"
        params = (clone / "params.yaml").read_text()
        assert "name: sgd" in params
        # An evaluation-only param invalidates evaluate and nothing else.
        (clone / "params.yaml").write_text(
            params.replace("normalize_confusion: false", "normalize_confusion: true")
        )
        changed = json.loads(_run(["dvc", "status", "--json"], clone, env))
        assert set(changed) == {"evaluate"}, changed
    finally:
        shutil.rmtree(clone, ignore_errors=True)
