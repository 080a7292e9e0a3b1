"""Every model family trains at the sweep spaces' edges: CI meets a native crash on its host.

TensorFlow's oneDNN kernels are chosen per CPU (AVX2, AVX-512, AMX) and per shape: a residual
block with 8 or 16 filters crashed on AVX-512 hosts only (Intel Xeon and AMD Zen 4). One epoch
on a few random images of conf/'s image size, for each conf/model/*.yaml family x block x the
smallest and largest widths that conf/sweep/*.yaml allow, in a child process: a native crash
fails this test naming the config instead of taking the test session down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import product

import pytest
import yaml

from imgclf.sweeps.space import parse_search_space
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.numerics  # rerun under every oneDNN ISA cap (tests/isa.py)

CONF = REPO_ROOT / "conf"


def _choices(key: str, default: list) -> list:
    """Every value of ``key`` that some conf/sweep/*.yaml allows (choice or range bounds)."""
    values = list(default)
    for path in sorted((CONF / "sweep").glob("*.yaml")):
        params = yaml.safe_load(path.read_text())["hydra"]["sweeper"].get("params", {})
        space, _ = parse_search_space({k: v for k, v in params.items() if k == key}, [])
        dist = space.get(key)
        if dist is None:
            continue
        values += list(getattr(dist, "choices", ())) or [dist.low, dist.high]
    return values


def edge_configs() -> list[list[str]]:
    families = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    filters = _choices("model.filters", [])
    growth = _choices("model.filter_growth", [])
    assert filters and growth, "conf/sweep/ searches no width: test the defaults instead"
    edges = [(min(filters), min(growth)), (max(filters), max(growth))]
    return [
        [
            f"model={family}",
            f"model.block={block}",
            f"model.filters={f}",
            f"model.filter_growth={g}",
        ]  # noqa: E501
        for family, block, (f, g) in product(families, ("plain", "residual"), edges)
    ]


CHILD = """
import json, sys, tempfile, time
from dataclasses import asdict, replace
from pathlib import Path
import numpy as np
from imgclf.artifacts import PreprocessOutputs
from imgclf.compose import compose_config
from imgclf.training import prepare
seen = set()
for overrides in json.loads(sys.argv[1]):
    t = time.perf_counter()
    fixed = ["augment=none", "train.batch_size=8", "train.threads=2"]
    cfg = compose_config(overrides=[*overrides, *fixed])
    model_cfg = json.dumps(asdict(replace(cfg.model, name="")), sort_keys=True)
    if model_cfg in seen:  # e.g. model=resnet is model=cnn once block and widths are set
        print("ok", *overrides, "same", flush=True)
        continue
    seen.add(model_cfg)
    print("start", *overrides, flush=True)
    h, w = cfg.data.image_height, cfg.data.image_width
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, h, w, 3), dtype=np.uint8)
    pre = PreprocessOutputs(Path(tempfile.mkdtemp()))
    pre.write_arrays({"train": (x, np.arange(8) % 3)}, ["a", "b", "c"])
    train = pre.reader().subset("train")
    model, train_ds, _ = prepare(cfg, {"train": train, "val": train.take([])}, 3)  # one step
    loss = model.fit(train_ds, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss), overrides
    print("ok", *overrides, f"{time.perf_counter() - t:.1f}s", flush=True)
"""


@pytest.mark.slow  # about 50 s of CPU on 2 cores: 8 distinct models, each traced and stepped
def test_every_family_trains_at_the_sweeps_smallest_and_largest_widths():
    configs = edge_configs()
    assert len(configs) == 12  # 3 families x 2 blocks x 2 edges
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(configs)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    lines = proc.stdout.splitlines()
    crashed = [line for line in lines if line.startswith("start")][-1:] if lines else []
    assert proc.returncode == 0, (
        f"exit {proc.returncode} while training {crashed}: {proc.stderr[-2000:]}"
    )
    assert [line.split()[1:-1] for line in lines if line.startswith("ok")] == configs
