"""Which CPU made a result, and what `imgclf summary` says when it is not the committed one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imgclf import cli
from imgclf.host import cpu_flags, host_cpu, other_host_note

ZEN3 = "AMD EPYC (sse4_2 avx avx2 fma)"
ZEN4 = "AMD EPYC (sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16)"
COMMITTED = {"host_cpu": ZEN3, "accuracy": 1.0, "leakfree_accuracy": 1.0, "n_test": 150}
CV = {
    "cv_default_accuracy": 0.9773,
    "cv_default_ci95_low": 0.9649,
    "cv_default_ci95_high": 0.9876,
    "cv_n": 750,
    "cv_folds": 5,
}


def test_the_host_names_its_model_flags_and_a_cap_on_onednn(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = host_cpu()
    assert "ONEDNN_MAX_CPU_ISA" not in plain
    if "avx2" in cpu_flags():
        assert "avx2" in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert host_cpu() == f"{plain}, ONEDNN_MAX_CPU_ISA=AVX2"  # another cap, other kernels


def test_no_note_when_the_same_cpu_made_both_or_one_is_unnamed():
    moved = {**COMMITTED, "accuracy": 0.5}  # e.g. `dvc exp run -S`: not the CPU's doing
    assert other_host_note(COMMITTED, moved, CV) == ""
    assert other_host_note({}, {**COMMITTED, "host_cpu": ZEN4}, CV) == ""


def test_another_cpu_gets_two_lines_hosts_differences_and_the_cv_figure():
    current = {**COMMITTED, "host_cpu": ZEN4, "accuracy": 0.99333, "leakfree_accuracy": 0.98305}
    lines = other_host_note(COMMITTED, current, CV).splitlines()
    assert len(lines) == 2
    assert f"come from {ZEN3}, these from {ZEN4}" in lines[0]
    assert "leak-free accuracy 0.983 against 1.000 (-1.7 points)" in lines[0]
    assert "accuracy 0.993 against 1.000 (-0.7 points)" in lines[0]
    assert "cross-validated 97.7 % [96.5, 98.8] (750 files, 5 grouped folds)" in lines[1]
    assert "BENCHMARKS.md's cross-validated figure" in other_host_note(COMMITTED, current, None)


def _git(root: Path, *args: str) -> None:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", *ident, *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository with committed metrics from a Zen 3, as a clone of the project has."""
    (tmp_path / "artifacts/evaluate").mkdir(parents=True)
    (tmp_path / "artifacts/train").mkdir(parents=True)
    (tmp_path / "artifacts/evaluate/metrics.json").write_text(json.dumps(COMMITTED))
    (tmp_path / "artifacts/train/train.json").write_text(
        json.dumps({"best_epoch": 90, "epochs_run": 90, "refit": True})
    )
    (tmp_path / "benchmarks.json").write_text(json.dumps(CV))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "committed metrics")
    return tmp_path


def test_summary_says_nothing_more_on_the_committed_cpu(project, capsys):
    assert cli.main(["summary", "--root", str(project)]) == 0
    out = capsys.readouterr().out
    assert "leak-free accuracy     1.000" in out and "Another CPU" not in out


def test_summary_after_a_repro_on_another_cpu_says_so(project, capsys):
    metrics = project / "artifacts/evaluate/metrics.json"
    metrics.write_text(json.dumps({**COMMITTED, "host_cpu": ZEN4, "leakfree_accuracy": 0.98305}))
    assert cli.main(["summary", "--root", str(project)]) == 0
    tail = capsys.readouterr().out.splitlines()[-2:]
    assert tail[0].startswith(f"Another CPU: the committed metrics come from {ZEN3}")
    assert "leak-free accuracy 0.983 against 1.000 (-1.7 points)" in tail[0]
    assert "97.7 % [96.5, 98.8]" in tail[1]
