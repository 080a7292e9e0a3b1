"""open_run on a real SQLite MLflow store: names, tags, truthful ends, reopens, parents."""

from __future__ import annotations

import os
import random
import socket
import subprocess

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgclf import tracking
from imgclf.tracking import store as tracking_store
from imgclf.tracking.store import retrying


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (a new one costs a second of migrations)."""
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mp.undo()


@pytest.fixture
def exp(store, request):
    """An experiment of its own per test: opening a run reaps only its own experiment."""
    return request.node.name


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _held_by(pid: int) -> dict[str, str]:
    return {tracking.HOST_TAG: socket.gethostname(), tracking.PID_TAG: str(pid)}


def test_a_run_carries_lineage_holder_and_a_name_of_its_own(exp, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    ids = []
    for _ in range(2):
        random.seed(42)  # what keras.utils.set_random_seed does before every training
        with tracking.open_run(exp, "train", tags={"stage": "train"}) as run_id:
            assert mlflow.active_run().info.run_id == run_id
        ids.append(run_id)
    runs = [MlflowClient().get_run(i) for i in ids]
    assert runs[0].info.run_name != runs[1].info.run_name
    for run in runs:
        assert run.info.run_name.startswith("train-") and run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["imgclf.pid"] == str(os.getpid()) and tags["imgclf.host"]
        assert {"git_commit", "data_md5"} <= set(tags) and tags["stage"] == "train"
    assert mlflow.active_run() is None


def test_a_dvc_experiment_names_the_run(exp, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-oak")
    with tracking.open_run(exp, "train") as run_id:
        pass
    run = MlflowClient().get_run(run_id)
    assert run.info.run_name == "train-sunny-oak"
    assert run.data.tags["dvc_exp_name"] == "sunny-oak"


class Pruned(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ValueError("boom"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (Pruned(), "KILLED"),
        (SystemExit(2), "FAILED"),
    ],
)
def test_a_run_ends_truthfully(exp, exc, status):
    with pytest.raises(type(exc)), tracking.open_run(exp, "job", killed_on=(Pruned,)) as run_id:
        raise exc
    assert tracking.run_status(run_id) == status
    assert mlflow.active_run() is None


def test_a_parent_is_not_active_and_its_children_are(exp):
    parent = tracking.open_run(exp, "sweep", tags={"stage": "sweep"}, active=False)
    assert mlflow.active_run() is None
    assert parent.name.startswith("sweep-")
    for n in range(2):
        with tracking.open_run(exp, f"job-{n}", parent_run_id=parent.run_id) as child:
            assert mlflow.active_run().info.run_id == child
            tracking.log_metrics({"val_accuracy": 0.5}, step=0)
        assert MlflowClient().get_run(child).data.tags["mlflow.parentRunId"] == parent.run_id
    assert tracking.run_status(parent.run_id) == "RUNNING"
    parent.end()
    parent.end(KeyboardInterrupt())  # once only
    run = MlflowClient().get_run(parent.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["imgclf.pid"] == str(os.getpid())


def test_a_reopened_run_keeps_its_name_and_is_held_by_this_process(exp):
    exp_id = tracking.configure(exp)
    client = MlflowClient()
    killed = client.create_run(
        exp_id,
        run_name="train-first",
        tags={**_held_by(_dead_pid()), tracking.ENDED_BY_TAG: "process died", "git_commit": "a"},
    ).info.run_id
    client.set_terminated(killed, "KILLED")
    with tracking.open_run(exp, "evaluate", run_id=killed) as run_id:
        assert run_id == killed and tracking.run_status(run_id) == "RUNNING"
    run = client.get_run(killed)
    assert run.info.run_name == "train-first" and run.info.status == "FINISHED"
    assert run.data.tags["imgclf.pid"] == str(os.getpid())
    assert tracking.ENDED_BY_TAG not in run.data.tags
    assert run.data.tags["git_commit"] == "a"  # the lineage of the run's own training


def test_a_reopen_of_a_lost_run_opens_a_new_one(exp):
    with tracking.open_run(exp, "export", run_id="0" * 32) as run_id:
        pass
    run = MlflowClient().get_run(run_id)
    assert run_id != "0" * 32 and run.data.tags["orphan_of"] == "0" * 32
    assert run.info.run_name.startswith("export-") and run.info.status == "FINISHED"


def test_opening_a_run_ends_the_runs_of_dead_processes_and_revives_a_held_parent(exp):
    exp_id = tracking.configure(exp)
    client = MlflowClient()
    dead = _dead_pid()
    stale = client.create_run(exp_id, tags=_held_by(dead)).info.run_id
    live = client.create_run(exp_id, tags=_held_by(os.getpid())).info.run_id
    elsewhere = client.create_run(
        exp_id, tags={tracking.HOST_TAG: "another-host", tracking.PID_TAG: str(dead)}
    ).info.run_id
    # Study parents whose last holder died (one already reaped by a run of another process):
    # the process adding a trial to a study holds its parent now.
    parent = client.create_run(exp_id, tags=_held_by(dead)).info.run_id
    reaped = client.create_run(exp_id, tags=_held_by(dead)).info.run_id
    tracking.mark_killed(reaped, "process died")
    for n, p in enumerate((parent, reaped)):
        with tracking.open_run(exp, f"trial-{n}-s", parent_run_id=p) as child:
            pass
    status = {r: tracking.run_status(r) for r in (stale, live, elsewhere, parent, reaped, child)}
    assert status == {
        stale: "KILLED",
        live: "RUNNING",
        elsewhere: "RUNNING",
        parent: "RUNNING",
        reaped: "RUNNING",
        child: "FINISHED",
    }
    for p in (parent, reaped):
        tags = client.get_run(p).data.tags
        assert tags["imgclf.pid"] == str(os.getpid()) and tracking.ENDED_BY_TAG not in tags
    assert client.get_run(stale).data.tags["imgclf.ended_by"] == (
        f"process {dead} on {socket.gethostname()} died"
    )


def test_retrying_retries_lock_errors_only():
    calls = []

    def locked_twice(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return x * 2

    assert retrying(locked_twice, 21) == 42 and len(calls) == 3

    def broken() -> None:
        calls.append(0)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST")

    calls.clear()
    with pytest.raises(MlflowException, match="RESOURCE"):
        retrying(broken)
    assert calls == [0]


def test_a_store_that_stays_locked_is_an_error_not_a_lost_run(exp, monkeypatch):
    # Before, any MlflowException from get_run meant "not found": a lock that outlasted the
    # retries opened an orphan run in place of the one asked for (a sweep's second parent).
    with tracking.open_run(exp, "train") as run_id:
        pass
    monkeypatch.setattr(tracking_store, "LOCK_RETRIES", 2)

    def locked(self, _run_id):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(MlflowClient, "get_run", locked)
    before = len(MlflowClient().search_runs([tracking.configure(exp)]))
    with pytest.raises(MlflowException, match="database is locked"):
        tracking.open_run(exp, "evaluate", run_id=run_id)
    monkeypatch.undo()
    assert len(MlflowClient().search_runs([tracking.configure(exp)])) == before
