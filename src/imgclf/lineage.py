"""Where a result came from: project root, git revision, data hash, DVC experiment name, CPU.

A run's ``git_commit`` is the commit it ran from, suffixed ``-dirty`` only when *code or config*
differs from it; ``imgclf.dirty_files`` lists what differs. The pipeline's own outputs (every
``outs``/``metrics``/``plots`` path of dvc.yaml, the ``.gitignore`` files DVC keeps beside them,
and ``dvc.lock``) are not differences: a fresh clone's ``make repro`` rewrites the committed
metrics and lock, and its runs still name a clean commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

DIRTY_FILES_TAG = "imgclf.dirty_files"  # code or config that differs from git_commit, or "none"
HOST_CPU_TAG = "imgclf.host_cpu"


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


def _git(cwd: Path | None, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def committed_text(path: Path, rev: str = "HEAD") -> str | None:
    """``path``'s content as committed at ``rev``; ``None`` where it is not in git (untracked,
    no repository, no such revision)."""
    path = path.resolve()
    try:
        return _git(path.parent, "show", f"{rev}:./{path.name}")
    except (OSError, subprocess.CalledProcessError):
        return None


def git_state(cwd: Path | None = None) -> tuple[str, list[str]]:
    """The current commit and the files, relative to the repository, whose code or config
    differs from it: tracked files changed (not the pipeline's outputs) and untracked files in
    the project's ``src/`` and ``conf/``. ``("unknown", [])`` outside a git repository."""
    try:
        rev, top = _git(cwd, "rev-parse", "HEAD", "--show-toplevel").split()
        status = _git(cwd, "status", "--porcelain=v1", "-z", "--untracked-files=no")
        project = project_root(cwd)
        untracked = _git(
            cwd, "ls-files", "--others", "--exclude-standard", "--full-name", "-z", "--",
            str(project / "src"), str(project / "conf"),
        )  # fmt: skip
    except (OSError, ValueError, subprocess.CalledProcessError):
        return "unknown", []
    changed = []
    entries = iter(status.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        changed.append(entry[3:])
        if entry[0] in "RC":  # a rename's or copy's source follows as its own entry
            next(entries, None)
    changed += [p for p in untracked.split("\0") if p]
    outputs = pipeline_outputs(project, Path(top))
    differ = sorted({p for p in changed if not _is_output(p, outputs)})
    return rev, differ


def _is_output(path: str, outputs: set[str]) -> bool:
    return any(path == o or path.startswith(f"{o}/") for o in outputs)


def pipeline_outputs(project: Path, repo_top: Path) -> set[str]:
    """Paths (relative to the repository) the pipeline writes itself: dvc.lock, every out,
    metric and plot of dvc.yaml, and the .gitignore DVC keeps in each out's folder."""
    try:
        spec = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8")) or {}
        prefix = project.resolve().relative_to(repo_top.resolve()).as_posix()
    except (OSError, ValueError, yaml.YAMLError):
        return set()
    paths = {"dvc.lock"}
    for stage in (spec.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                out = entry if isinstance(entry, str) else next(iter(entry))
                paths |= {out, f"{Path(out).parent.as_posix()}/.gitignore"}
    return {p if prefix == "." else f"{prefix}/{p}" for p in paths}


def git_revision(cwd: Path | None = None) -> str:
    """The current commit, suffixed ``-dirty`` when code or config differs from it."""
    rev, differ = git_state(cwd)
    return f"{rev}-dirty" if differ else rev


def _listed(paths: list[str], limit: int = 5000) -> str:
    """The paths comma-separated, cut to fit an MLflow tag, saying how many were left out."""
    text = ",".join(paths)
    if len(text) <= limit:
        return text or "none"
    kept = text[: limit - 40].rsplit(",", 1)[0]
    return f"{kept},... ({len(paths) - kept.count(',') - 1} more)"


def data_hash(dvc_file: Path) -> str:
    """The md5 of the data directory tracked by ``data.dvc`` ("unknown" if absent)."""
    try:
        meta = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        return str(meta["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def lineage_tags(root: Path | None = None) -> dict[str, str]:
    """Tags every MLflow run and model version carries."""
    from imgclf.host import host_cpu

    root = root or project_root()
    rev, differ = git_state(Path.cwd())
    tags = {
        "git_commit": f"{rev}-dirty" if differ else rev,
        DIRTY_FILES_TAG: _listed(differ),
        HOST_CPU_TAG: host_cpu(),
        "data_md5": data_hash(Path.cwd() / "data.dvc"),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
