"""The imgclf_optuna sweeper over an ordinary Hydra app (sweep_app/quadratic.py, no TensorFlow).

Each sweep runs as users run it, in its own process, against a real SQLite Optuna storage and
MLflow store: any return shape, Hydra's search grammar, grid and multi-objective studies,
pruning through the storage, the joblib launcher's worker processes, and a job that dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

APP = Path(__file__).with_name("sweep_app") / "quadratic.py"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One MLflow store and one Optuna storage for the module (creating them takes seconds)."""
    root = tmp_path_factory.mktemp("any-app")
    return root, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", f"sqlite:///{root / 'optuna.db'}"


@pytest.fixture
def sweep(stores, tmp_path, request):
    """``sweep(*overrides, code=0)``: the app swept in its own process, as a study of its own."""
    root, uri, storage = stores
    name = request.node.name.removeprefix("test_")[:40]  # the study and its MLflow experiment
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("IMGCLF_SWEEP_STORAGE", None)

    def run(*args: str, code: int = 0, study: str = name) -> subprocess.CompletedProcess:
        settings = [f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study}",
                    f"hydra.sweeper.best_config={tmp_path / 'best.yaml'}"]  # fmt: skip
        proc = subprocess.run(
            [sys.executable, str(APP), *settings, *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == code, proc.stderr[-3000:]
        return proc

    run.tmp = tmp_path  # type: ignore[attr-defined]
    run.name = name  # type: ignore[attr-defined]
    run.storage = storage  # type: ignore[attr-defined]
    run.client = MlflowClient(uri)  # type: ignore[attr-defined]
    run.study = lambda study=name: optuna.load_study(study_name=study, storage=storage)  # type: ignore[attr-defined]
    return run


def _runs(sweep, experiment: str) -> list:
    exp = sweep.client.get_experiment_by_name(experiment)
    return sweep.client.search_runs([exp.experiment_id])


def test_a_float_returning_app_is_optimised_and_ranked_in_mlflow(sweep):
    out = sweep().stdout
    study = sweep.study()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    assert all(-4.0 <= t.params["x"] <= 4.0 and t.params["y"] in (-1, 0, 1) for t in study.trials)
    best = study.best_trial
    assert f"best trial {best.number}: value={best.value:.4f}" in out
    # best.yaml applies the winner's overrides to the app's own config.
    assert yaml.safe_load((sweep.tmp / "best.yaml").read_text())["x"] == best.params["x"]
    runs = _runs(sweep, sweep.name)  # no mlflow.experiment_name in the app: the study's name
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.x"] == "interval(-4.0, 4.0)"
    assert parent.data.params["space.y"] == "choice(-1, 0, 1)"
    assert parent.data.params["study.direction"] == "minimize"
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.metrics["best_trial"] == best.number
    assert parent.data.metrics["n_complete"] == 6
    arts = {a.path for a in sweep.client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/trials.txt"} <= arts
    # The app logs nothing itself: the sweeper records each trial as a child run.
    children = [r for r in runs if r is not parent]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(6))
    assert {r.info.status for r in children} == {"FINISHED"}
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert by_trial[best.number].data.metrics["value"] == pytest.approx(best.value)


@pytest.mark.slow  # joblib worker processes / a whole grid: CI runs the slow group
def test_a_dict_needs_the_objective_key_and_a_grid_visits_each_point_once(sweep):
    proc = sweep("returns=dict", code=1)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("imgclf_optuna: the job returned a dict with ['loss', 'size']: set ")
    assert [t.state for t in sweep.study().trials] == [TrialState.FAIL]
    # A search space of other kinds (choice for interval) needs a study of its own.
    proc = sweep("x=choice(1.0, 2.0)", code=1)
    assert "x was searched as" in proc.stderr.strip().splitlines()[-1]
    # The objective named, a grid: n_trials is capped at the grid's size, each point once.
    sweep("returns=dict", "hydra.sweeper.objective=loss", "hydra.sweeper.sampler.name=grid",
          "x=choice(1.0, 2.0, 3.0)", "y=range(0, 2)", "hydra.sweeper.n_trials=10",
          study="grid")  # fmt: skip
    done = [t for t in sweep.study("grid").trials if t.state == TrialState.COMPLETE]
    points = sorted((t.params["x"], t.params["y"]) for t in done)
    assert points == [(x, y) for x in (1.0, 2.0, 3.0) for y in (0, 1)]
    assert min(t.value for t in done) == 1.0  # loss at x=2, y=0


def test_multi_objective_logs_the_pareto_front_and_picks_best_by_the_documented_rule(sweep):
    out = sweep(
        "returns=dict", "hydra.sweeper.objective=[loss,size]",
        "hydra.sweeper.direction=[minimize,minimize]", "hydra.sweeper.n_trials=8",
        "hydra.sweeper.pareto_tolerance=0.5",
    ).stdout  # fmt: skip
    study = sweep.study()
    front = study.best_trials
    best_loss = min(t.values[0] for t in front)
    chosen = min((t for t in front if t.values[0] <= best_loss + 0.5), key=lambda t: t.values[1])
    assert f"best trial {chosen.number}: loss=" in out and "on the Pareto front" in out
    assert yaml.safe_load((sweep.tmp / "best.yaml").read_text())["x"] == chosen.params["x"]
    parent = next(r for r in _runs(sweep, sweep.name) if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.metrics["best_trial"] == chosen.number
    assert parent.data.metrics["best_size"] == pytest.approx(chosen.values[1])
    assert parent.data.metrics["pareto_size"] == len(front)
    arts = {a.path for a in sweep.client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/pareto_front.png", "optuna/pareto_front.txt"} <= arts


def test_an_app_that_reports_values_is_pruned_through_the_storage(sweep):
    study = optuna.create_study(study_name=sweep.name, storage=sweep.storage, direction="minimize")
    # A finished trial no other can match at any step: the median pruner stops the next ones.
    study.add_trial(optuna.trial.create_trial(value=-1.0, intermediate_values={0: -1.0}))
    sweep("steps=3", "hydra.sweeper.n_trials=3",
          "hydra.sweeper.pruner.name=median", "hydra.sweeper.pruner.n_startup_trials=1",
          "hydra.sweeper.pruner.n_warmup_steps=0")  # fmt: skip
    trials = sweep.study().trials[1:]
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)


@pytest.mark.slow  # joblib worker processes / a whole grid: CI runs the slow group
def test_joblib_runs_trials_in_worker_processes_and_a_crashing_job_fails_only_its_batch(sweep):
    proc = sweep(
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=4",
        "x=choice(1.0, 2.0, 3.0, 4.0, 5.0)", "crash_on=5.0", "hydra.sweeper.sampler.name=grid",
    )  # fmt: skip
    study = sweep.study()
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and len({t.number for t in done}) == 4
    pids = {t.user_attrs["pid"] for t in study.trials if "pid" in t.user_attrs}
    assert os.getpid() not in pids and len(pids) >= 2  # the jobs ran in joblib's workers
    crashed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert crashed and any(t.params["x"] == 5.0 for t in crashed)
    assert all("launcher" in t.user_attrs["error"] for t in crashed)
    assert "4 done" in proc.stdout


def test_a_worker_that_gives_up_on_an_incomplete_study_says_so_and_exits_non_zero(sweep):
    proc = sweep("x=choice(1.0)", "raise_on=1.0", "hydra.sweeper.max_failures=1", code=1)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"imgclf_optuna: study '{sweep.name}' is incomplete: 0/6 trials done, 2 failed "
        "(hydra.sweeper.max_failures=1); see the FAIL trials' error attribute and their MLflow runs"
    )
    trials = sweep.study().trials
    assert [t.user_attrs["error"] for t in trials] == ["RuntimeError: no good at x=1.0"] * 2
    runs = _runs(sweep, sweep.name)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED"
    assert sorted(r.info.status for r in runs if r is not parent) == ["FAILED", "FAILED"]
