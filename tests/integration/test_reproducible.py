"""The same commit and seed give identical outputs on the same host.

One more run of the train and evaluate stages on the session's tiny pipeline (same config, same
seed) must write byte-identical histories, predictions and metrics to the session's own run.
Across CPU kinds they may differ (BENCHMARKS.md): that is why metrics name the CPU.
"""

from __future__ import annotations

import json

import pytest

from imgclf.host import host_cpu
from imgclf.stages import evaluate, train
from tests.integration.conftest import copy_trained

pytestmark = pytest.mark.numerics  # rerun under every oneDNN ISA cap (tests/isa.py)


def test_a_second_run_gives_byte_identical_outputs(trained_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", copy_trained(trained_tiny, tmp_path / "copy"))
    monkeypatch.chdir(tmp_path)
    # train.deterministic stays off here: TensorFlow's op determinism is for the whole process
    # and cannot be turned off again (BENCHMARKS.md measures it in processes of its own).
    cfg = trained_tiny.cfg
    out = tmp_path / "again"
    train.run(cfg, in_dir=trained_tiny.preprocess_dir, out_dir=out / "train")
    evaluate.run(
        cfg,
        preprocess_dir=trained_tiny.preprocess_dir,
        train_dir=out / "train",
        out_dir=out / "evaluate",
    )
    for rel in ("train/history.csv", "evaluate/predictions.csv", "evaluate/metrics.json"):
        again, first = (out / rel).read_bytes(), (trained_tiny.art / rel).read_bytes()
        assert again == first, f"{rel} differs between two runs with the same seed"
    assert json.loads((out / "evaluate/metrics.json").read_text())["host_cpu"] == host_cpu()
