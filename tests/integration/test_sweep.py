"""Sweeps end to end on the tiny data: the real ``imgclf-train`` command, Hydra, Optuna storage
and MLflow store, each sweep in its own process (as users run them)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from imgclf.compose import compose_params
from imgclf.stages import ingest, preprocess
from imgclf.sweeps.study import PARENT_ATTR
from imgclf.sweeps.workers import study_parent_run
from imgclf.tracking import open_run
from tests.conftest import REPO_ROOT, tiny_config

EXE = str(Path(sys.executable).with_name("imgclf-train"))
EXPERIMENT = "sweep-tests"
TINY = [
    "data.image_height=32", "data.image_width=48", "model.blocks=2", "model.filters=8",
    "model.dense_units=16", "train.epochs=3", "train.batch_size=8", "train.threads=1",
    f"mlflow.experiment_name={EXPERIMENT}",
]  # fmt: skip


@pytest.fixture(scope="module")
def env(tiny_dataset, tmp_path_factory):
    """Preprocessed tiny data, a copy of conf/ (best.yaml lands there), a SQLite MLflow store."""
    work = tmp_path_factory.mktemp("sweep")
    art = work / "artifacts"
    cfg = tiny_config()
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    ingest.run(cfg, in_dir=tiny_dataset, out_dir=art / "ingest")
    preprocess.run(cfg, data_dir=tiny_dataset, ingest_dir=art / "ingest",
                   out_dir=art / "preprocess")  # fmt: skip
    shutil.copytree(REPO_ROOT / "conf", work / "conf")
    child_env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "IMGCLF_CONF_DIR": str(work / "conf"),
        "IMGCLF_PREPROCESS_DIR": str(art / "preprocess"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    yield {"work": work, "uri": uri, "env": child_env, "client": MlflowClient(uri)}
    mp.undo()


def storage_url(env, name: str) -> str:
    return f"sqlite:///{env['work'] / (name + '.db')}"


def optuna_args(env, study: str, n_trials: int, *extra: str) -> list[str]:
    return [
        "hydra/sweeper=imgclf_optuna", "sweep=cnn",
        f"hydra.sweeper.study_name={study}", f"hydra.sweeper.storage={storage_url(env, study)}",
        f"hydra.sweeper.n_trials={n_trials}", "optimizer.learning_rate=interval(0.001, 0.01)",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", *TINY, *extra,
    ]  # fmt: skip


def launch(env, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [EXE, *args], cwd=env["work"], env=env["env"], text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    assert "database is locked" not in err
    return out


def children(env, parent_id: str) -> list:
    exp = env["client"].get_experiment_by_name(EXPERIMENT)
    return env["client"].search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


def load(env, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(env, name))


def test_grid_sweep_logs_child_runs_under_one_parent(env):
    out = finish(launch(env, ["-m", "optimizer=adam,sgd", *TINY]))
    assert "2 jobs; MLflow parent run" in out
    parent_id = out.split("MLflow parent run ")[1].split()[0]
    parent = env["client"].get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "sweep"
    runs = children(env, parent_id)
    assert sorted(r.data.params["optimizer.name"] for r in runs) == ["adam", "sgd"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics["best_val_accuracy"] <= 1.0
        assert not any("test" in key for key in run.data.metrics)  # scored on validation only
        # conf/ refits the train stage; a job scored on validation must not train on it
        assert run.data.params["train.refit"] == "False"


def _grid_args(experiment: str, *extra: str) -> list[str]:
    return [
        "-m", *[a for a in TINY if not a.startswith("mlflow.")],
        f"mlflow.experiment_name={experiment}", *extra,
    ]  # fmt: skip


def _runs(env, experiment: str) -> list:
    exp = env["client"].get_experiment_by_name(experiment)
    return env["client"].search_runs([exp.experiment_id]) if exp else []


def test_grid_sweep_with_a_failing_job_ends_its_parent_failed(env):
    # The second job's batch size fails the typed config check after the first job trained.
    proc = launch(env, _grid_args("sweep-fails", "train.batch_size=8,0"))
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "train.batch_size" in err
    runs = _runs(env, "sweep-fails")
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert [r.info.status for r in runs if r is not parent[0]] == ["FINISHED"]


@pytest.mark.slow  # several sweep processes of real trainings: CI runs the slow group
def test_sigterm_ends_a_grid_sweep_and_its_runs_killed(env):
    proc = launch(env, _grid_args("sweep-term", "optimizer=adam,sgd", "train.epochs=200"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until the first job has logged an epoch
        time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before it could be stopped: {proc.stderr.read()[-2000:]}")
        job = [r for r in _runs(env, "sweep-term") if "mlflow.parentRunId" in r.data.tags]
        if job and "val_loss" in job[0].data.metrics:
            break
    else:
        pytest.fail("no job logged an epoch in time")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143  # 128 + SIGTERM
    assert err.rstrip().endswith("imgclf-train: terminated (SIGTERM)") and "Traceback" not in err
    assert "database is locked" not in err
    runs = _runs(env, "sweep-term")
    # The parent and the job that was training; the second job never started.
    assert len(runs) == 2 and [r.info.status for r in runs] == ["KILLED", "KILLED"]
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 1


@pytest.mark.slow  # several sweep processes of real trainings: CI runs the slow group
def test_killed_sweep_resumes_retries_and_tops_up(env):
    """A sweep killed mid-trial: its trial fails by heartbeat, is retried, never counted done."""
    proc = launch(env, optuna_args(env, "resume", 3))
    db = env["work"] / "resume.db"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until trial 1 runs, with an MLflow run and a heartbeat
        time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"sweep ended before it could be killed: {proc.stderr.read()[-2000:]}")
        if not db.exists():
            continue
        try:
            # Only once the sweep has created the study: an Optuna storage opened on a file
            # whose schema is still being written races it to stamp alembic_version.
            with sqlite3.connect(db) as con:
                if not con.execute("select 1 from studies where study_name = 'resume'").fetchone():
                    continue
                beats = con.execute("select count(*) from trial_heartbeats").fetchone()[0]
            trials = load(env, "resume").get_trials()
        except (KeyError, sqlite3.OperationalError):
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and running and "mlflow_run_id" in running[0].user_attrs and beats:
            break
    killed = running[0]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert killed.number == 1

    # The relaunch tops the study up; each trial trains in a child process (flat memory).
    out = finish(launch(env, optuna_args(env, "resume", 3)))
    study = load(env, "resume")
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                      TrialState.COMPLETE]  # fmt: skip
    retried = study.trials[2]
    assert retried.system_attrs["failed_trial"] == 1  # the killed trial's parameters again
    assert retried.params == killed.params
    # ... and exactly those trained: the retried trial's MLflow run logged the same values.
    trained = env["client"].get_run(retried.user_attrs["mlflow_run_id"]).data.params
    for key, value in retried.params.items():  # a config group's value is its name
        assert trained.get(f"{key}.name", trained.get(key)) == str(value), key
    assert "3 done" in out
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["rss_mb"] > 0 and t.user_attrs["epochs_run"] == 3 for t in done)

    # One parent run for the study across both launches; the dead trial's run is FAILED.
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    runs = {r.data.tags["optuna.trial"]: r for r in children(env, parent_id)}
    assert sorted(runs) == ["0", "1", "2", "3"]
    assert runs["1"].info.status == "FAILED" and runs["1"].data.tags["optuna.state"] == "FAIL"
    assert runs["3"].info.status == "FINISHED" and runs["3"].data.tags["optuna.state"] == "COMPLETE"
    artifacts = {a.path for a in env["client"].list_artifacts(parent_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/trials.txt"} <= artifacts

    # The winner as an experiment config that composes into params.yaml's shape.
    best = study.best_trial
    best_yaml = env["work"] / "conf" / "experiment" / "best.yaml"
    assert yaml.safe_load(best_yaml.read_text())["defaults"][-1] == "_self_"
    composed = yaml.safe_load(compose_params(env["work"] / "conf", ["+experiment=best"]))
    assert composed["optimizer"]["name"] == best.params["optimizer"]
    assert composed["optimizer"]["learning_rate"] == pytest.approx(
        best.params["optimizer.learning_rate"]
    )
    assert composed["train"]["epochs"] == 3 and "hydra" not in composed


def test_pruned_trial_is_pruned_in_optuna_and_killed_in_mlflow(env):
    # A finished trial no real run can match at any epoch: the median pruner stops the next.
    study = optuna.create_study(study_name="prune", storage=storage_url(env, "prune"),
                                direction="maximize")  # fmt: skip
    study.set_user_attr("objective", "val_accuracy")
    study.add_trial(optuna.trial.create_trial(value=2.0, intermediate_values={0: 2.0, 1: 2.0,
                                                                              2: 2.0}))  # fmt: skip
    args = optuna_args(env, "prune", 2, "hydra.sweeper.pruner.n_startup_trials=1",
                       "hydra.sweeper.pruner.n_warmup_steps=0")  # fmt: skip
    out = finish(launch(env, [*args, f"hydra.sweeper.best_config={env['work'] / 'b.yaml'}"]))
    trial = load(env, "prune").trials[1]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["epochs_run"] == 1 and list(trial.intermediate_values) == [0]
    run = env["client"].get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert run.data.metrics["epochs_run"] == 1
    assert "1 pruned" in out


@pytest.mark.slow  # real trainings, one killed by SIGSEGV: CI runs the slow group
def test_a_trial_that_crashes_natively_fails_alone_and_the_sweep_goes_on(env):
    # The test-only hook makes trial 1's training process kill itself with SIGSEGV, as the
    # oneDNN crash did: before, that took the whole sweep down (and every relaunch with it).
    crashing = {**env, "env": {**env["env"], "IMGCLF_TEST_SEGFAULT": "1"}}
    out = finish(launch(crashing, optuna_args(env, "segv", 2, "train.epochs=1")))
    study = load(env, "segv")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.COMPLETE]  # fmt: skip
    crashed = study.trials[1]
    assert "SIGSEGV" in crashed.user_attrs["error"]
    run = env["client"].get_run(crashed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "2 done" in out


@pytest.mark.slow  # several sweep processes of real trainings: CI runs the slow group
def test_two_processes_share_one_study(env):
    args = optuna_args(env, "parallel", 4)
    procs = [launch(env, args) for _ in range(2)]
    outs = [finish(p) for p in procs]
    study = load(env, "parallel")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4
    # A trial asked when the study was already full is failed as surplus, never trained.
    others = [t for t in study.trials if t not in done]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in others)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    assert all(f"MLflow parent run {parent_id}" in out for out in outs), outs
    assert len(children(env, parent_id)) == 4
    # Per-trial seeding: the two processes did not propose the same parameters.
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4


class _CreatorBetweenReads:
    """A study as a joining worker sees it while the creator runs: right after the worker's
    first read of the user attributes, the creator sets the parent id and asks a trial."""

    def __init__(self, study: optuna.Study, creator: optuna.Study, parent_id: str):
        self._study, self._creator, self._parent_id = study, creator, parent_id
        self._acted = False

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    @property
    def user_attrs(self) -> dict:
        attrs = self._study.user_attrs
        if not self._acted:
            self._acted = True
            self._creator.set_user_attr(PARENT_ATTR, self._parent_id)
            self._creator.ask()
        return attrs


def test_a_worker_joining_as_the_creator_starts_reuses_its_parent_run(mlflow_store, tmp_path):
    # Before, the joining worker read the id (not yet set), then the trials (one by then), took
    # the study for one made outside a sweep and opened a second parent run over the first.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    creator = optuna.create_study(study_name="race", storage=url)
    parent = open_run(EXPERIMENT, "optuna-race", active=False).run_id
    joining = optuna.load_study(study_name="race", storage=url)
    seen = _CreatorBetweenReads(joining, creator, parent)
    assert study_parent_run(seen, False, EXPERIMENT, url) == parent  # type: ignore[arg-type]
    assert creator.user_attrs[PARENT_ATTR] == parent
    exp = MlflowClient().get_experiment_by_name(EXPERIMENT)
    assert len(MlflowClient().search_runs([exp.experiment_id])) == 1


def test_plugin_is_discovered_from_a_fresh_install(tmp_path):
    """A non-editable install into a new environment registers hydra/sweeper=imgclf_optuna."""
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "src", src / "src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    uv = Path(sys.executable).with_name("uv")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    # The dependencies from this environment, but not its editable imgclf (.pth files of an
    # added path are not processed): imgclf and the plugin come from the fresh install only.
    Path(site, "deps.pth").write_text(deps + "\n")
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "--no-deps", src],
                   check=True)  # fmt: skip
    probe = f"""
import hydra_plugins.imgclf_optuna_sweeper as p, imgclf
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
assert p.__file__.startswith({site!r}) and imgclf.__file__.startswith({site!r}), p.__file__
assert "ImgclfOptunaSweeper" in [s.__name__ for s in Plugins.instance().discover(Sweeper)]
with initialize_config_dir({str(REPO_ROOT / "conf")!r}, version_base=None):
    cfg = compose("config", ["hydra/sweeper=imgclf_optuna"], return_hydra_config=True)
print(cfg.hydra.sweeper._target_, cfg.hydra.sweeper.sampler.name, cfg.hydra.sweeper.pruner.name)
"""
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        "hydra_plugins.imgclf_optuna_sweeper.imgclf_optuna_sweeper.ImgclfOptunaSweeper",
        "tpe",
        "median",
    ]
