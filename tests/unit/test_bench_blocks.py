"""BENCHMARKS.md's generated blocks: rewriting one keeps the rest of the file byte for byte, and
the CV block says what its interval covers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import REPO_ROOT


def _load(name: str):
    """A module of scripts/ (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("bench_report")


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


def _committed_cv() -> dict:
    """The committed benchmarks.json's CV figures, in the shape bench_cv.render takes."""
    return _load("bench_cv").results(json.loads((REPO_ROOT / "benchmarks.json").read_text()))


def test_the_committed_cv_block_is_drawn_from_the_committed_figures() -> None:
    """BENCHMARKS.md's CV block and benchmarks.json say the same (`bench.py --only render`)."""
    bench_cv = _load("bench_cv")
    r = _committed_cv()
    block = bench_cv.render(r, bench_cv.classes_of(r["default"]))
    text = (REPO_ROOT / "BENCHMARKS.md").read_text()
    assert block.rstrip("\n") in text


def test_the_cv_block_says_whether_its_interval_covers_the_seed() -> None:
    bench_cv = _load("bench_cv")
    classes = ["driving_license", "others", "social_security"]
    r = _committed_cv()
    one = bench_cv.render(r, classes)
    assert "one training seed (`train.seed`), which the interval does not cover" in one
    assert "standard deviation over the seeds" not in one
    for recipe in ("default", "seed"):
        r[recipe] = r[recipe] | {"cv_repeats": 3.0, "cv_accuracy_seed_std": 0.012}
    three = bench_cv.render(r, classes)
    assert "mean over 3 training seeds" in three and "resampling groups and seeds" in three
    assert "| accuracy: standard deviation over the seeds | 1.2 points | 1.2 points | |" in three
    assert bench_cv.figures(r)["cv_repeats"] == 3


def test_the_committed_scale_block_is_drawn_from_the_committed_figures() -> None:
    """BENCHMARKS.md's scale block is bench_scale.render of benchmarks.json's `scale`."""
    scale = json.loads((REPO_ROOT / "benchmarks.json").read_text())["scale"]
    block = _load("bench_scale").render(scale)
    assert block.rstrip("\n") in (REPO_ROOT / "BENCHMARKS.md").read_text()
