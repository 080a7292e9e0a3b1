"""scripts/bench_scale.py's guard: a stage that runs out of memory, passes the RSS cap or fails
is a row saying so, never a crash of the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.unit.test_bench_blocks import _load

bench = _load("bench_scale")
GB = 2**30


def _run(tmp_path: Path, code: str, cap: int = 4 * GB, timeout: float = 60) -> dict:
    log = tmp_path / "stage.log"
    return bench.run_stage([sys.executable, "-c", code], tmp_path, {}, log, cap, timeout)


def test_a_clean_exit_is_ok_with_its_peak_rss(tmp_path: Path) -> None:
    # Linux carries the parent's RSS at fork into the child's ru_maxrss (exec records the old
    # address space's high-water mark), so the stage is started from a fresh, small process as
    # bench_scale.py's own parent is, not from this test worker (TensorFlow loaded: ~0.9 GB).
    code = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    launcher = (
        "import json, sys; from pathlib import Path; from tests.unit.test_bench_scale import _run;"
        f"print(json.dumps(_run(Path(sys.argv[1]), {code!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", launcher, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["status"] == "ok"
    assert 200 <= r["peak_rss_mb"] < 400 and r["wall_s"] > 0


def test_a_memory_error_is_named(tmp_path: Path) -> None:
    r = _run(tmp_path, "raise MemoryError('Unable to allocate 74 GiB')")
    assert r["status"] == "failed: MemoryError"


def test_other_failures_give_the_exit_status_and_last_line(tmp_path: Path) -> None:
    r = _run(tmp_path, "import sys; print('imgclf train: no such folder'); sys.exit(2)")
    assert r["status"] == "failed: exit 2 (imgclf train: no such folder)"


def test_the_rss_guard_kills_the_whole_process_group(tmp_path: Path) -> None:
    code = (
        "import time; b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    )
    r = _run(tmp_path, code, cap=GB // 4)
    assert r["status"] == "killed: tree RSS over 0.25 GB" and r["wall_s"] < 20


def test_a_failed_stage_skips_the_rest_and_is_rendered() -> None:
    rows = [
        {
            "stage": "yardstick",
            "n": 10,
            "wall_s": 1.0,
            "cpu_s": 2.0,
            "images_per_s": 10,
            "workers": 2,
            "status": "ok",
        },
        {
            "stage": "ingest",
            "n": 10,
            "wall_s": 2.0,
            "cpu_s": 3.0,
            "images_per_s": 5,
            "peak_rss_mb": 300,
            "tree_rss_mb": 310,
            "status": "ok",
        },
        {
            "stage": "preprocess",
            "n": 10,
            "wall_s": 2.0,
            "cpu_s": 3.0,
            "images_per_s": 5,
            "peak_rss_mb": 300,
            "tree_rss_mb": 310,
            "status": "failed: MemoryError",
        },
        {"stage": "train", "n": 10, "status": "skipped: preprocess did not finish"},
    ]
    assert bench.ratio(rows) is None  # preprocess did not finish
    entry = {
        "n": 10,
        "date": "d",
        "commit": "c",
        "command": "x",
        "override": ["a=1"],
        "max_rss_gb": 6.0,
        "load_before": 1.0,
        "load_after": 2.0,
        "generate": {"seconds": 1.0, "images_per_s": 10.0, "mb": 1.0},
        "rows": rows,
        "ingest_preprocess_vs_yardstick": None,
    }
    text = bench.render({"machine": "2 cores", "cpu_model": "X", "sizes": {"10": entry}})
    assert "| preprocess | 10 | 2.0 | 3.0 | 5 | 300 | 310 | failed: MemoryError |" in text
    assert "| train | 10 | | | | | | skipped: preprocess did not finish |" in text
    rows[2]["status"] = "ok"
    assert bench.ratio(rows) == {"wall": 4.0, "cpu": 3.0}
