"""Lineage tells the truth: the pipeline's own outputs do not make a commit "dirty"."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imgclf.lineage import DIRTY_FILES_TAG, HOST_CPU_TAG, git_state, lineage_tags

DVC_YAML = """\
stages:
  train:
    cmd: imgclf train
    deps: [src/imgclf/train.py]
    outs:
      - artifacts/train/model.keras
      - artifacts/train/history.csv:
          cache: false
    metrics:
      - artifacts/train/train.json:
          cache: false
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed project whose pipeline keeps two outputs in git (cache: false)."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    root = tmp_path / "repo"
    for rel, text in {
        "dvc.yaml": DVC_YAML,
        "dvc.lock": "schema: '2.0'\n",
        "params.yaml": "train:\n  epochs: 3\n",
        "src/imgclf/train.py": "EPOCHS = 3\n",
        "artifacts/train/history.csv": "epoch,loss\n",
        "artifacts/train/train.json": "{}\n",
        "artifacts/train/.gitignore": "/model.keras\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "init")
    monkeypatch.chdir(root)
    return root


def test_the_pipelines_own_outputs_are_not_dirty(repo: Path):
    head = _git(repo, "rev-parse", "HEAD").strip()
    for rel in ("dvc.lock", "artifacts/train/history.csv", "artifacts/train/train.json"):
        (repo / rel).write_text("rewritten by dvc repro\n")
    (repo / "artifacts/train/.gitignore").write_text("/model.keras\n/other\n")
    assert git_state() == (head, [])
    tags = lineage_tags()
    assert tags["git_commit"] == head and tags[DIRTY_FILES_TAG] == "none"
    assert tags[HOST_CPU_TAG]


def test_code_and_config_changes_are_listed(repo: Path):
    head = _git(repo, "rev-parse", "HEAD").strip()
    (repo / "src/imgclf/train.py").write_text("EPOCHS = 4\n")
    (repo / "params.yaml").write_text("train:\n  epochs: 4\n")
    (repo / "src/imgclf/new.py").write_text("")  # untracked code counts too
    (repo / "notes.txt").write_text("")  # an untracked file elsewhere does not
    assert git_state() == (head, ["params.yaml", "src/imgclf/new.py", "src/imgclf/train.py"])
    tags = lineage_tags()
    assert tags["git_commit"] == f"{head}-dirty"
    assert tags[DIRTY_FILES_TAG] == "params.yaml,src/imgclf/new.py,src/imgclf/train.py"


def test_outside_git_the_commit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state() == ("unknown", [])
