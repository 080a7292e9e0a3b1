"""Every run ends truthfully, even when its process is SIGKILLed, and every run has its own name.

Real ``imgclf-train`` processes (a grid sweep, an Optuna sweep, a lone job) log to a real SQLite
MLflow store and are SIGKILLed as soon as their run is RUNNING; nothing in them can mark the run.
The next run started in the experiment on this host must end each of them KILLED.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from imgclf import tracking
from imgclf.artifacts import PreprocessOutputs
from imgclf.fileio import write_json
from imgclf.stages import train
from tests.conftest import REPO_ROOT, TINY_CLASSES, draw_class_image, tiny_config

log = logging.getLogger(__name__)
EXE = str(Path(sys.executable).with_name("imgclf-train"))
EXPERIMENT = "lifecycle"
TINY = [
    "data.image_height=32", "data.image_width=48", "data.fit=stretch", "model.blocks=2",
    "model.filters=8", "model.dense_units=16", "augment=none", "train.batch_size=8",
    "train.threads=1", "train.patience=1000", f"mlflow.experiment_name={EXPERIMENT}",
]  # fmt: skip
LONG = "train.epochs=500"  # a victim must still be training when it is killed
START_TIMEOUT_S = 300  # three TensorFlow processes starting at once on two busy cores


def _write_tensors(folder: Path, n: int = 24) -> Path:
    """What preprocess writes for the jobs: seeded class images as shards."""
    rng = np.random.default_rng(2)
    y = np.arange(n) % len(TINY_CLASSES)
    x = np.stack([draw_class_image(int(k), rng, 32, 48) for k in y])
    subsets = {"train": (x, y), "val": (x[:9], y[:9]), "test": (x[:3], y[:3])}
    PreprocessOutputs(folder).write_arrays(subsets, list(TINY_CLASSES))
    write_json(folder / "classes.json", list(TINY_CLASSES))
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("lifecycle")
    pre = _write_tensors(work / "preprocess")
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    child_env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "IMGCLF_CONF_DIR": str(REPO_ROOT / "conf"),
        "IMGCLF_PREPROCESS_DIR": str(pre),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure(EXPERIMENT)  # the store's tables exist before anyone polls or races
    yield {"work": work, "pre": pre, "uri": uri, "env": child_env, "client": MlflowClient(uri)}
    mp.undo()


def _launch(env, name: str, args: list[str]) -> subprocess.Popen:
    """Start ``imgclf-train``, its output into ``<name>.log`` (a full pipe would stall it)."""
    with (env["work"] / f"{name}.log").open("w") as out:
        return subprocess.Popen(
            [EXE, *args], cwd=env["work"], env=env["env"], stdout=out, stderr=subprocess.STDOUT
        )


def _runs(env) -> list:
    exp = env["client"].get_experiment_by_name(EXPERIMENT)
    return env["client"].search_runs([exp.experiment_id]) if exp else []


# Which run of the experiment a victim must have RUNNING before it is killed.
def _grid_job(run) -> bool:
    return "mlflow.parentRunId" in run.data.tags and "optuna.trial" not in run.data.tags


def _trial(run) -> bool:
    return "optuna.trial" in run.data.tags


def _lone(run) -> bool:
    return run.data.tags.get("stage") == "imgclf-train"


@pytest.fixture(scope="module")
def killed(env):
    """Start the three victims at once, SIGKILL each as its run turns up, then open the next run.

    Returns:
        Each victim's run as the store holds it after the next run (the train stage's), that
        run, and every run of the experiment by id.
    """
    storage = f"sqlite:///{env['work'] / 'study.db'}"
    optuna = [
        "-m", "hydra/sweeper=imgclf_optuna", "hydra.sweeper.study_name=victim",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.best_config={env['work'] / 'best.yaml'}",
        "optimizer.learning_rate=interval(0.001, 0.01)",
    ]  # fmt: skip
    victims = {
        _grid_job: _launch(env, "grid", ["-m", "optimizer=adam,sgd", LONG, *TINY]),
        _trial: _launch(env, "optuna", [*optuna, LONG, *TINY]),
        _lone: _launch(env, "lone", [LONG, *TINY]),
    }
    found: dict = {}
    started = time.monotonic()
    try:
        while len(found) < len(victims):
            assert time.monotonic() < started + START_TIMEOUT_S, f"only {list(found)} started"
            time.sleep(0.3)
            for is_victim, proc in victims.items():
                if is_victim in found:
                    continue
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args} ended before its kill; see {env['work']}/*.log")
                mine = [r for r in _runs(env) if is_victim(r) and r.info.status == "RUNNING"]
                if mine:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    found[is_victim] = mine[0].info.run_id
                    since = time.monotonic() - started
                    log.info("%s killed %.1f s after the launch", is_victim.__name__, since)
    finally:
        for proc in victims.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(p.returncode == -signal.SIGKILL for p in victims.values())

    # The next run in the experiment on this host: the train stage's (in this process).
    first = train.run(_stage_config(), in_dir=env["pre"], out_dir=env["work"] / "train-1")
    runs = {r.info.run_id: r for r in _runs(env)}
    after = {f.__name__.lstrip("_"): runs[run_id] for f, run_id in found.items()}
    return {**after, "next": runs[first.run_id], "runs": runs}


def _stage_config():
    return tiny_config(
        train={"epochs": 1, "threads": 1, "seed": 5},
        augment={"enabled": False},
        mlflow={"experiment_name": EXPERIMENT},
    )


def _assert_killed_by_the_next_run(run) -> None:
    assert run.info.status == "KILLED", run.info.run_name
    assert f"process {run.data.tags['imgclf.pid']} on " in run.data.tags["imgclf.ended_by"]


def test_a_sigkilled_grid_job_and_its_parent_end_killed(killed):
    job = killed["grid_job"]
    _assert_killed_by_the_next_run(job)
    parent = killed["runs"][job.data.tags["mlflow.parentRunId"]]
    _assert_killed_by_the_next_run(parent)
    assert parent.data.tags["imgclf.pid"] == job.data.tags["imgclf.pid"]


def test_a_sigkilled_optuna_trial_and_its_study_parent_end_killed(killed):
    trial = killed["trial"]
    _assert_killed_by_the_next_run(trial)
    assert trial.data.tags["optuna.study"] == "victim"
    _assert_killed_by_the_next_run(killed["runs"][trial.data.tags["mlflow.parentRunId"]])


def test_a_sigkilled_lone_job_ends_killed(killed):
    _assert_killed_by_the_next_run(killed["lone"])
    nxt = killed["next"]
    assert nxt.info.status == "FINISHED" and "imgclf.ended_by" not in nxt.data.tags
    assert nxt.data.tags["imgclf.host"] == killed["lone"].data.tags["imgclf.host"]


def test_every_run_has_its_own_readable_name(killed):
    names = [r.info.run_name for r in killed["runs"].values()]
    assert len(set(names)) == len(names), names
    assert killed["lone"].info.run_name.startswith("imgclf-train-")
    assert killed["trial"].info.run_name.startswith("trial-0-victim-")
    assert killed["grid_job"].info.run_name.startswith("job-0-")


def test_two_consecutive_train_stage_runs_get_different_names(env, killed):
    # The same config and seed again: keras.utils.set_random_seed seeds Python's `random` too.
    second = train.run(_stage_config(), in_dir=env["pre"], out_dir=env["work"] / "train-2")
    names = [killed["next"].info.run_name, env["client"].get_run(second.run_id).info.run_name]
    assert names[0] != names[1] and all(n.startswith("train-") for n in names), names
