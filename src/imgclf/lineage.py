"""Where a result came from: project root, git revision, data hash, DVC experiment name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml


def project_root(start: Path | None = None) -> Path:
    """The project root, also from inside DVC's temporary experiment copies.

    DVC runs queued and ``--temp`` experiments in copies under ``.dvc/tmp/exps`` and sets
    ``DVC_ROOT`` to the parent repository for them, so that is honoured first.
    """
    env_root = os.environ.get("DVC_ROOT")
    here = (start or Path.cwd()).resolve()
    if env_root and ".dvc/tmp/exps" not in Path(env_root).as_posix():
        return Path(env_root).resolve()
    parts = here.as_posix().split("/.dvc/tmp/exps/")
    if len(parts) > 1:
        return Path(parts[0])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file() or (candidate / ".dvc").is_dir():
            return candidate
    return here


def git_revision(cwd: Path | None = None) -> str:
    """The current commit, suffixed ``-dirty`` when tracked files have changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def data_hash(dvc_file: Path) -> str:
    """The md5 of the data directory tracked by ``data.dvc`` ("unknown" if absent)."""
    try:
        meta = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        return str(meta["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def lineage_tags(root: Path | None = None) -> dict[str, str]:
    """Tags every MLflow run and model version carries."""
    root = root or project_root()
    tags = {
        "git_commit": git_revision(Path.cwd()),
        "data_md5": data_hash(Path.cwd() / "data.dvc"),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
