"""BENCHMARKS.md's generated blocks: rewriting one keeps the rest of the file byte for byte."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "bench_report", REPO_ROOT / "scripts" / "bench_report.py"
)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_rewriting_a_block_is_idempotent(tmp_path: Path) -> None:
    start, end = "<!-- x:start -->", "<!-- x:end -->"
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nintro\n\n{start}\nold\n{end}\n\nReading it:\n- a\n")
    block = f"{start}\nnew table\n{end}\n"  # a renderer's trailing newline must not pile up
    report.write_benchmarks(path, block, start, end)
    once = path.read_text()
    report.write_benchmarks(path, block, start, end)
    assert path.read_text() == once
    assert once == f"# Benchmarks\n\nintro\n\n{start}\nnew table\n{end}\n\nReading it:\n- a\n"


def test_a_missing_block_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    start, end = "<!-- y:start -->", "<!-- y:end -->"
    path.write_text("# Benchmarks\n\nhand-written\n")
    report.write_benchmarks(path, f"{start}\nrows\n{end}", start, end)
    assert path.read_text() == f"# Benchmarks\n\nhand-written\n\n{start}\nrows\n{end}\n"
