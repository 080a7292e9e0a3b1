"""Crash safety, checked by really killing real processes.

Training runs as the ``imgclf train`` command (the one dvc.yaml runs) on synthetic tensors big
enough that an epoch outlasts the test's polling, so a kill lands while training is under way.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from imgclf import cli, resume, tracking
from imgclf import model as model_module
from imgclf.artifacts import PreprocessOutputs
from imgclf.fileio import write_json
from imgclf.stages import train
from tests.conftest import REPO_ROOT, TINY_CLASSES, draw_class_image, tiny_config, write_params

IMGCLF = str(Path(sys.executable).with_name("imgclf"))
EPOCHS = 6
BATCH = 16
N_TRAIN = 192  # 12 steps per epoch


def _write_tensors(folder: Path, n_train: int = N_TRAIN, n_val: int = 48) -> Path:
    """What preprocess would write: seeded class images as shards."""
    rng = np.random.default_rng(1)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % len(TINY_CLASSES)
        return np.stack([draw_class_image(int(k), rng, 32, 48) for k in y]), y.astype(np.int64)

    x_train, y_train = split(n_train)
    x_val, y_val = split(n_val)
    PreprocessOutputs(folder).write_arrays(
        {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_val[:6], y_val[:6])},
        list(TINY_CLASSES),
    )
    write_json(folder / "classes.json", list(TINY_CLASSES))
    return folder


@pytest.fixture
def train_setup(tmp_path: Path, mlflow_store: str) -> dict:
    cfg = tiny_config(
        train={"epochs": EPOCHS, "batch_size": BATCH, "patience": 50, "threads": 1, "seed": 3},
        augment={"enabled": False},
    )
    pre = _write_tensors(tmp_path / "preprocess")
    params = write_params(tmp_path / "params.yaml", cfg)
    out = tmp_path / "train"
    cmd = [IMGCLF, "train", "--params", str(params), "--preprocess", str(pre), "--out", str(out)]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return {
        "cfg": cfg,
        "pre": pre,
        "out": out,
        "cmd": cmd,
        "env": env,
        "uri": mlflow_store,
        "tmp": tmp_path,
    }


def _latest_checkpoint(out: Path) -> tuple[int, dict] | None:
    """The newest complete checkpoint's epoch count and state, or None."""
    root = out / resume.RESUME_DIRNAME
    done = sorted(root.glob("epoch-*")) if root.is_dir() else []
    for ckpt in reversed(done):
        try:
            state = json.loads((ckpt / resume.STATE_NAME).read_text())
        except (OSError, ValueError):  # renamed away by the trainer as we read it
            continue
        return state["epochs_done"], state
    return None


def _signal_after(
    out: Path, pid: int, sig: int, after_epoch: int, alive: Callable[[], bool]
) -> dict:
    """Send ``sig`` to ``pid`` once ``after_epoch`` epochs are checkpointed in ``out``."""
    while True:
        seen = _latest_checkpoint(out)
        if seen is not None and seen[0] >= after_epoch:
            os.kill(pid, sig)
            return seen[1]
        assert alive(), "training ended before the signal"
        time.sleep(0.02)


def _sigterm_self_after(out: Path, after_epoch: int) -> threading.Event:
    """A watcher thread that sends SIGTERM to this very process (the CLI door runs here).

    Set the returned event once the command has returned, so a watcher that never fired
    cannot signal a later step of the test.
    """
    done = threading.Event()

    def watch() -> None:
        with contextlib.suppress(AssertionError):
            _signal_after(out, os.getpid(), signal.SIGTERM, after_epoch, lambda: not done.is_set())

    threading.Thread(target=watch, daemon=True).start()
    return done


def _read_history(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_sigterm_then_sigkill_then_resume_continues_the_same_run(train_setup, caplog):
    s = train_setup
    client = MlflowClient(s["uri"])
    argv = s["cmd"][1:]

    # SIGTERM to the train command: it unwinds, the run ends KILLED, the checkpoint stays.
    done = _sigterm_self_after(s["out"], after_epoch=1)
    try:
        assert cli.main(argv) == cli.EXIT_TERMINATED
    finally:
        done.set()
    seen = _latest_checkpoint(s["out"])
    assert seen is not None and seen[0] >= 1
    run_id = seen[1]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert not (s["out"] / "model.keras").exists()

    # SIGKILL to a train process: nothing can run; the run is left RUNNING, outputs absent.
    log = s["tmp"] / "train.log"
    with log.open("ab") as f:
        proc = subprocess.Popen(
            s["cmd"], cwd=s["tmp"], env=s["env"], stdout=f, stderr=subprocess.STDOUT
        )
    try:
        _signal_after(s["out"], proc.pid, signal.SIGKILL, seen[0] + 2, lambda: proc.poll() is None)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    k, killed = _latest_checkpoint(s["out"]) or (0, {})
    assert 1 <= k < EPOCHS, "the kill must land mid-training"
    assert killed["run_id"] == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    assert sorted(p.name for p in s["out"].iterdir()) == [resume.RESUME_DIRNAME]

    # The same command again resumes after epoch k and finishes the same run.
    caplog.set_level(logging.INFO, logger="imgclf")
    assert cli.main(argv) == 0
    assert f"resuming after epoch {k} (MLflow run {run_id})" in caplog.text
    assert json.loads((s["out"] / "run.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_after_epoch"] == str(k)

    # History: every epoch once, the pre-kill epochs exactly as they were checkpointed.
    rows = _read_history(s["out"] / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    for i in range(k):
        assert float(rows[i]["loss"]) == pytest.approx(killed["history"]["loss"][i], abs=1e-6)
    metrics = {
        key: client.get_metric_history(run_id, key)
        for key in ("loss", "val_loss", "accuracy", "val_accuracy", "optimizer_iterations")
    }
    for key, hist in metrics.items():
        assert sorted(m.step for m in hist) == list(range(EPOCHS)), key
    # Optimizer state carried over: its step counter (what a learning-rate schedule reads)
    # kept counting across both restarts instead of starting again from zero.
    iterations = {m.step: m.value for m in metrics["optimizer_iterations"]}
    assert iterations == {e: float((e + 1) * (N_TRAIN // BATCH)) for e in range(EPOCHS)}
    # Best-so-far carried over: the best epoch is the best of all epochs, not of the last leg.
    val_loss = [m.value for m in sorted(metrics["val_loss"], key=lambda m: m.step)]
    summary = json.loads((s["out"] / "train.json").read_text())
    assert summary["best_epoch"] == int(np.argmin(val_loss)) + 1
    assert summary["epochs_run"] == EPOCHS
    # The spent checkpoint is gone; a further run would start afresh.
    assert list((s["out"] / resume.RESUME_DIRNAME).glob("epoch-*")) == []


def _interrupt_after_epoch_2(s: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    """Train until 2 epochs are checkpointed, then stop as a SIGKILL would: run left RUNNING."""
    log_metrics = tracking.log_metrics

    def interrupted_after_epoch_2(metrics, step=None):
        log_metrics(metrics, step)
        if step == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tracking, "log_metrics", interrupted_after_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train.run(s["cfg"], in_dir=s["pre"], out_dir=s["out"])
    seen = _latest_checkpoint(s["out"])
    assert seen is not None and seen[0] == 2
    client = MlflowClient(s["uri"])
    assert client.get_run(seen[1]["run_id"]).info.status == "KILLED"  # Ctrl-C ends it KILLED
    client.update_run(seen[1]["run_id"], status="RUNNING")
    return seen[1]["run_id"]


@pytest.mark.parametrize("change", ["params", "model code"])
def test_a_changed_experiment_starts_afresh_and_ends_the_abandoned_run(
    train_setup, monkeypatch, change
):
    s = train_setup
    old = _interrupt_after_epoch_2(s, monkeypatch)
    cfg = s["cfg"]
    if change == "params":
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
    else:  # same params, but model.py now builds a different network: the weights won't fit
        build = model_module.build_model

        def wider(mcfg, *args, **kwargs):
            return build(dataclasses.replace(mcfg, filters=mcfg.filters * 2), *args, **kwargs)

        monkeypatch.setattr(model_module, "build_model", wider)
    result = train.run(cfg, in_dir=s["pre"], out_dir=s["out"])
    assert result.run_id != old and result.epochs_run == cfg.train.epochs
    client = MlflowClient(s["uri"])
    assert client.get_run(old).info.status == "KILLED"
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert "resumed_after_epoch" not in client.get_run(result.run_id).data.tags


def test_nan_loss_fails_the_run_and_writes_nothing(train_setup):
    # The NaN is injected: a NaN output kernel makes the first batch's loss NaN on every CPU
    # (an outsized learning rate overflows on some CPUs and not on others).
    import keras

    class NaNWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            kernel = self.model.get_layer("probs").kernel
            kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))

    s = train_setup
    cfg = tiny_config(train={"epochs": 3, "threads": 1})
    with pytest.raises(FloatingPointError, match="diverged"):
        train.run(cfg, in_dir=s["pre"], out_dir=s["out"], callbacks=[NaNWeights()])
    client = MlflowClient(s["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert sorted(p.name for p in s["out"].iterdir()) == [resume.RESUME_DIRNAME]
    assert list((s["out"] / resume.RESUME_DIRNAME).glob("epoch-*")) == []
    assert client.search_registered_models() == []


def test_exception_fails_the_run(mlflow_store):
    with pytest.raises(ValueError), tracking.open_run("tiny", "run") as run_id:
        raise ValueError("boom")
    assert tracking.run_status(run_id) == "FAILED"


def test_run_of_a_dead_process_is_marked_killed_at_the_next_start(mlflow_store):
    dead = subprocess.Popen(["true"])
    dead.wait()
    exp_id = tracking.configure("tiny")
    client = MlflowClient()
    stale = client.create_run(
        exp_id, tags={tracking.HOST_TAG: os.uname().nodename, tracking.PID_TAG: str(dead.pid)}
    ).info.run_id
    live = client.create_run(
        exp_id, tags={tracking.HOST_TAG: os.uname().nodename, tracking.PID_TAG: str(os.getpid())}
    ).info.run_id
    elsewhere = client.create_run(
        exp_id, tags={tracking.HOST_TAG: "another-host", tracking.PID_TAG: str(dead.pid)}
    ).info.run_id
    with tracking.open_run("tiny", "run") as run_id:
        pass
    status = {r: tracking.run_status(r) for r in (stale, live, elsewhere, run_id)}
    assert status == {stale: "KILLED", live: "RUNNING", elsewhere: "RUNNING", run_id: "FINISHED"}


CONCURRENT_WRITER = """
import sys
from imgclf import tracking
with tracking.open_run("shared", f"writer-{sys.argv[1]}") as run_id:
    tracking.log_params({f"p{i}": i for i in range(20)})
    for step in range(40):
        tracking.log_metrics({"a": step, "b": -step}, step=step)
        tracking.set_tags({"last_step": str(step)})
print(run_id)
"""


def test_concurrent_writers_share_one_sqlite_store(tmp_path, mlflow_store):
    # A fresh store: the writers also race to create its tables.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, str(i)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]
    client = MlflowClient(mlflow_store)
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(run.data.params) == 20 and run.data.tags["last_step"] == "39"
        assert [m.step for m in client.get_metric_history(run_id, "a")] == list(range(40))
    db = mlflow_store.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


HOLD_LOCK = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(str(os.getpid())); f.flush()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_trainer_on_the_same_folder_is_refused(train_setup):
    # A SIGKILLed `dvc repro` leaves its stage command running as an orphan; a second
    # `dvc repro` must not train into the same folder beside it.
    s = train_setup
    lock = s["out"] / resume.RESUME_DIRNAME / resume.LOCK_NAME
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            resume.TrainingBusyError,
            match=f"another train \\(pid {holder.pid}\\).*kill {holder.pid}",
        ):
            train.run(s["cfg"], in_dir=s["pre"], out_dir=s["out"])
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: nothing stale is left to clean up.
    with resume.Checkpointer(lock.parent, "key").locked():
        assert lock.read_text() == str(os.getpid())
