"""Sweep benchmarks for BENCHMARKS.md: a 12-trial study's trials/hour and peak memory per launcher,
and the residual shortcut's train-step time (subsample + 1x1 conv against the strided 1x1 conv).

    python scripts/bench_sweeps.py study --label after-inprocess -- <imgclf-train args>
    python scripts/bench_sweeps.py shortcut

``study`` runs one ``imgclf-train -m`` command (its environment as given: MLFLOW_TRACKING_URI,
IMGCLF_PREPROCESS_DIR, IMGCLF_CONF_DIR, PYTHONPATH for another checkout) and samples the
resident memory of its whole process tree (the sweeper, launcher workers, training children)
every 0.2 s; it prints one JSON line: wall time, trials/hour, peak tree and peak sweeper RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _tree_memory(proc: object) -> tuple[float, float, float]:
    """(RSS of the tree, PSS of the tree, RSS of the sweeper) in MiB.

    RSS counts the pages a fork shares with its parent (TensorFlow, preloaded by the fork
    server) once per process; PSS splits them between the sharers, so the tree's PSS is what
    the sweep really takes from the machine.
    """
    import psutil

    assert isinstance(proc, psutil.Process)
    rss = pss = 0.0
    main = 0.0
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0, 0.0
    for p in tree:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        if p.pid == proc.pid:
            main = info.rss
    return rss / 2**20, pss / 2**20, main / 2**20


def study(label: str, n_trials: int, args: list[str]) -> dict[str, object]:
    import psutil

    exe = str(Path(sys.executable).with_name("imgclf-train"))
    start = time.monotonic()
    popen = subprocess.Popen([exe, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc = psutil.Process(popen.pid)
    peak_tree = peak_pss = peak_main = 0.0
    while popen.poll() is None:
        tree, pss, main = _tree_memory(proc)
        peak_tree, peak_pss = max(peak_tree, tree), max(peak_pss, pss)
        peak_main = max(peak_main, main)
        time.sleep(0.3)
    wall = time.monotonic() - start
    out = popen.stdout.read().decode(errors="replace") if popen.stdout else ""
    if popen.returncode != 0:
        sys.stderr.write(out[-3000:])
        raise SystemExit(f"{label}: exit {popen.returncode}")
    row = {
        "label": label,
        "wall_s": round(wall, 1),
        "trials_per_hour": round(n_trials * 3600 / wall, 1),
        "peak_tree_rss_mib": round(peak_tree),
        "peak_tree_pss_mib": round(peak_pss),
        "peak_sweeper_mib": round(peak_main),
        "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(row), flush=True)
    return row


def shortcut(reps: int) -> None:
    """Train-step time of the default model, old strided shortcut vs the new one, interleaved."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from keras import layers

    import imgclf.model as model_module
    from imgclf.compose import compose_config
    from imgclf.training import configure_tensorflow

    cfg = compose_config()
    configure_tensorflow(cfg.train.threads)
    new = model_module.subsample_shortcut

    def old(x: object, filters: int, *, use_bias: bool, name: str) -> object:
        return layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=use_bias,
                             name=f"{name}_shortcut")(x)  # fmt: skip

    shape = (cfg.data.image_height, cfg.data.image_width, 3)
    models = {}
    for name, fn in (("strided 1x1", old), ("subsample + 1x1", new)):
        model_module.subsample_shortcut = fn
        keras.utils.set_random_seed(0)
        m = model_module.build_model(cfg.model, shape, 3, augment=cfg.augment, seed=0)
        model_module.compile_model(m, cfg.optimizer, cfg.train, steps_per_epoch=10)
        models[name] = m
    model_module.subsample_shortcut = new
    batch, steps = cfg.train.batch_size, 10
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (batch * steps, *shape), dtype=np.uint8)
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, batch * steps)]
    for m in models.values():
        m.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(reps):
        for name, m in models.items():
            t = time.perf_counter()
            m.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            times[name].append((time.perf_counter() - t) / steps * 1000)
    best = {k: min(v) for k, v in times.items()}
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(json.dumps({
        "ms_per_step_min": {k: round(v, 1) for k, v in best.items()},
        "ms_per_step_median": {k: round(v, 1) for k, v in median.items()},
        "ratio_min": round(best["subsample + 1x1"] / best["strided 1x1"], 3),
        "ratio_median": round(median["subsample + 1x1"] / median["strided 1x1"], 3),
        "reps": reps, "load_avg": os.getloadavg()[0],
    }), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("study")
    s.add_argument("--label", required=True)
    s.add_argument("--n-trials", type=int, default=12)
    s.add_argument("args", nargs=argparse.REMAINDER)
    c = sub.add_parser("shortcut")
    c.add_argument("--reps", type=int, default=12)
    a = parser.parse_args()
    if a.what == "study":
        study(a.label, a.n_trials, [x for x in a.args if x != "--"])
    else:
        shortcut(a.reps)


if __name__ == "__main__":
    main()
