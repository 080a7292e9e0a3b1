"""`imgclf ui` (what `make ui` runs) serves the project's own store over the real REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from imgclf import tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_project_store(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with tracking.open_run("ui-test", "visible-run") as run_id:
        tracking.log_metrics({"val_accuracy": 0.5}, step=0)
    assert (project / "mlruns" / "mlflow.db").is_file()

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    exe = str(Path(sys.executable).with_name("imgclf"))
    proc = subprocess.Popen(
        [exe, "ui", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}"
                )
                with urllib.request.urlopen(req, timeout=5) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "mlflow ui did not answer on 127.0.0.1"
        assert body["run"]["info"]["run_name"].startswith("visible-run-")
        assert body["run"]["data"]["metrics"][0]["key"] == "val_accuracy"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
