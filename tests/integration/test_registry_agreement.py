"""DVC, the export folder and the registry agree after a real `dvc repro` is killed anywhere.

A tiny DVC project (the project's own dvc.yaml without its code deps, h5 + keras only) holds a
copy of the session's tiny pipeline with its first four stages committed to dvc.lock; each
test then runs the real `dvc repro` (which runs `imgclf export`), holds the export at a named
point (:mod:`imgclf.pauses`), kills processes there with SIGKILL, and runs `dvc repro` again.
Each kill test that needs a new version sets its own ``export.parity_samples`` (new settings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from imgclf import registry, tracking
from imgclf.artifacts import ExportOutputs, ModelFolder
from imgclf.params import load_config
from imgclf.pauses import PAUSE_AT, PAUSE_DIR
from imgclf.stages import export
from tests.conftest import REPO_ROOT, write_params
from tests.integration.conftest import copy_trained

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
NAME = "tiny-model"  # tests/conftest.py's TINY_OVERRIDE
WAIT_S = 240  # a TensorFlow process starting on two busy cores


def _project_dvc_yaml() -> str:
    """The project's stages, minus the code deps (the tiny project has no src/)."""
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    for stage in spec["stages"].values():
        stage["deps"] = [d for d in stage["deps"] if not str(d).startswith("src/")]
    spec.pop("plots", None)
    return yaml.safe_dump(spec, sort_keys=False)


def _dvc(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [DVC, *args], cwd=root, env=env or _env(root), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _env(root: Path, pause: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "IMGCLF_"))}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if pause:
        env |= {PAUSE_AT: pause, PAUSE_DIR: str(root / ".pauses")}
    return env


@pytest.fixture(scope="module")
def project(trained_tiny, tmp_path_factory):
    """The session's tiny pipeline as a DVC project whose first four stages are committed."""
    root = tmp_path_factory.mktemp("agreement") / "proj"
    root.mkdir()
    copy_trained(trained_tiny, root)  # its store is the project's own mlruns/, as DVC's runs use
    (root / "data.dvc").unlink()  # it pins a hash, not a folder this project has
    shutil.copytree(trained_tiny.data, root / "data" / "id-cards")
    (root / "dvc.yaml").write_text(_project_dvc_yaml(), encoding="utf-8")
    (root / ".pauses").mkdir()
    cfg = dataclasses.replace(
        trained_tiny.cfg,
        export=dataclasses.replace(trained_tiny.cfg.export, formats=["h5", "keras"]),
    )
    write_params(root / "params.yaml", cfg)
    _dvc(root, "init", "--no-scm", "-q")
    _dvc(root, "commit", "-f", "-q", "ingest", "preprocess", "train", "evaluate")
    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        mp.delenv(var, raising=False)
    mp.chdir(root)
    tracking.configure()
    yield root
    mp.undo()


def _use_parity_samples(root: Path, n: int) -> None:
    """A setting that shapes the version's files: a new export key for this test."""
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["export"]["parity_samples"] = n
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def _start_repro(root: Path, pause: str) -> tuple[subprocess.Popen, int]:
    """`dvc repro` in a session of its own, held at ``pause``; returns it and the stage's pid."""
    for old in (root / ".pauses").iterdir():
        old.unlink()
    repro = subprocess.Popen(
        [DVC, "repro"],
        cwd=root,
        env=_env(root, pause),
        stdout=(root / ".pauses" / "repro.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    marker = root / ".pauses" / f"{pause}.pid"
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        if repro.poll() is not None:
            log = (root / ".pauses" / "repro.log").read_text()[-3000:]
            pytest.fail(f"dvc repro exited ({repro.returncode}) before {pause}:\n{log}")
        assert time.monotonic() < deadline, f"timed out waiting for {pause}"
        time.sleep(0.1)
    time.sleep(0.1)  # the pid is written before the file is closed
    return repro, int(marker.read_text())


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _key(root: Path) -> tuple[str, str]:
    cfg = load_config(root / "params.yaml")
    model = (root / "artifacts" / "train" / "model.keras").read_bytes()
    return hashlib.sha256(model).hexdigest(), export.export_settings(cfg)


def _versions_of(key: tuple[str, str]) -> list[tracking.VersionInfo]:
    return [
        v
        for v in tracking.list_versions(NAME)
        if (v.tags.get(registry.MODEL_SHA_TAG), v.tags.get(registry.SETTINGS_TAG)) == key
    ]


def assert_agreement(root: Path) -> tracking.VersionInfo:
    """dvc status, registered.json, the export folder, the registry and the runs agree."""
    assert json.loads(_dvc(root, "status", "--json")) == {}
    out = ExportOutputs(root / "artifacts" / "export")
    assert not list(out.root.glob(f"{export.STAGING_PREFIX}*")), "a staging folder is left"
    assert stat.S_IMODE(out.formats.stat().st_mode) & 0o055 == 0o055, "formats is not readable"
    record = json.loads(out.registered.read_text())
    key = _key(root)
    (info,) = _versions_of(key)  # the trained model is registered once, with these settings
    assert record["version"] == info.version and record[registry.MODEL_SHA_TAG] == key[0]
    assert set(record["aliases"]) <= set(info.aliases) and "challenger" in info.aliases
    assert ModelFolder(out.formats).read_manifest() == registry.expected_hashes(info, out.formats)
    assert out.parity.read_bytes() == ModelFolder(out.formats).parity.read_bytes()
    keys = [
        (v.tags.get(registry.MODEL_SHA_TAG), v.tags.get(registry.SETTINGS_TAG))
        for v in tracking.list_versions(NAME)
    ]
    assert len(keys) == len(set(keys)), f"a trained model registered twice: {keys}"
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny")
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_name for r in running]
    train_run = client.get_run(
        json.loads((root / "artifacts/train/run.json").read_text())["run_id"]
    )
    assert train_run.info.status == RunStatus.to_string(RunStatus.FINISHED)
    return info


@pytest.mark.slow  # a killed dvc repro and a full rerun each: CI runs the slow group
def test_export_killed_while_writing_formats_is_redone_once(project):
    _use_parity_samples(project, 5)
    repro, stage = _start_repro(project, "exported")
    os.killpg(repro.pid, signal.SIGKILL)  # dvc and its stage, as a scheduler kills a job
    repro.wait(timeout=30)
    assert _wait_gone(stage)
    assert list((project / "artifacts" / "export").glob(f"{export.STAGING_PREFIX}*"))
    assert _versions_of(_key(project)) == []
    _dvc(project, "repro")
    assert_agreement(project)


@pytest.mark.slow  # a killed dvc repro and a full rerun each: CI runs the slow group
def test_export_killed_right_after_registering_reuses_the_version(project):
    _use_parity_samples(project, 6)
    repro, stage = _start_repro(project, "registered")
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait(timeout=30)
    assert _wait_gone(stage)
    (half,) = _versions_of(_key(project))  # registered, but no alias points at it yet
    assert "challenger" not in tracking.get_version(NAME, version=half.version).aliases
    _dvc(project, "repro")
    assert assert_agreement(project).version == half.version
    # A forced rerun (DVC would otherwise have restored its run-cache) registers nothing new.
    _dvc(project, "repro", "-f", "-s", "export")
    assert assert_agreement(project).version == half.version


def test_an_orphaned_export_stops_and_registers_nothing(project):
    _use_parity_samples(project, 5)  # the first test's settings: this rerun needs no conversion
    before = _versions_of(_key(project))
    repro, stage = _start_repro(project, "opened")  # its run is open, nothing registered yet
    os.kill(repro.pid, signal.SIGKILL)  # the parent dvc only: its stage is orphaned
    repro.wait(timeout=30)
    # Never released from its pause: the orphan notices its dvc is gone and stops by itself.
    assert _wait_gone(stage, timeout=30), "the orphaned export is still running"
    assert _versions_of(_key(project)) == before
    train_run = json.loads((project / "artifacts/train/run.json").read_text())["run_id"]
    assert MlflowClient().get_run(train_run).info.status == "KILLED"  # it ended its run itself
    _dvc(project, "repro")
    assert_agreement(project)
