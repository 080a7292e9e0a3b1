"""Grouped cross-validation end to end: ``imgclf-train cv=grouped5`` on the tiny data, as users
run it, with its fold runs, summary, predictions and its refusals."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.integration import test_sweep as sweep
from tests.integration.test_sweep import EXE, EXPERIMENT, TINY, children, finish, launch, load

env = sweep.env  # the sweep tests' module fixture: tiny data, a copy of conf/, a SQLite store
optuna_args = sweep.optuna_args

CV3 = ["cv=grouped5", "cv.folds=3"]
CLI = str(Path(EXE).with_name("imgclf"))


def test_a_cross_validated_job_logs_one_child_run_per_fold_and_its_summary(env):
    finish(launch(env, [*CV3, *TINY, "train.refit=true"]))
    exp = env["client"].get_experiment_by_name(EXPERIMENT)
    [job] = env["client"].search_runs(
        [exp.experiment_id], filter_string="tags.`imgclf.cv` LIKE '3 grouped folds%'"
    )
    m = job.data.metrics
    assert job.info.status == "FINISHED"
    assert m["cv_folds"] == 3 and m["cv_n"] == 48  # Training_data only: 16 per class
    assert m["cv_accuracy_ci95_low"] <= m["cv_accuracy"] <= m["cv_accuracy_ci95_high"]
    assert m["cv_accuracy_std"] >= 0
    assert len([k for k in m if k.startswith("cv_f1_") and k.endswith("_ci95_low")]) == 3
    assert job.data.params["cv.folds"] == "3" and job.data.params["train.refit"] == "True"

    folds = sorted(children(env, job.info.run_id), key=lambda r: r.data.tags["imgclf.fold"])
    assert [r.data.tags["imgclf.fold"] for r in folds] == ["1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in folds)
    fold_acc = [r.data.metrics["fold_accuracy"] for r in folds]
    assert abs(sum(fold_acc) / 3 - m["cv_accuracy"]) < 1e-9
    # A refit trains on the whole training part of each fold, every epoch, no validation.
    assert all(r.data.metrics["n_val"] == 0 and r.data.metrics["epochs_run"] == 3 for r in folds)
    losses = env["client"].get_metric_history(folds[0].info.run_id, "loss")
    assert [p.step for p in losses] == [0, 1, 2]

    local = env["client"].download_artifacts(
        job.info.run_id, "cv/predictions.csv", str(env["work"])
    )
    with open(local, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48 and len({r["path"] for r in rows}) == 48  # each file predicted once
    fold_of_group: dict[str, set[str]] = {}
    for r in rows:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in fold_of_group.values())  # no group straddles two folds
    classes = sorted({r["actual"] for r in rows})
    for r in rows:  # every class's probability, the predicted one the largest
        proba = {name: float(r[f"p_{name}"]) for name in classes}
        assert abs(sum(proba.values()) - 1) < 2e-3 and max(proba, key=proba.get) == r["predicted"]
        assert proba[r["predicted"]] == float(r["probability"])
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert abs(correct / 48 - m["cv_accuracy"]) < 0.05  # equal-sized folds: pooled ~ mean


def test_repeats_train_every_fold_again_under_the_next_seeds(env):
    out = finish(launch(env, ["cv=grouped5", "cv.folds=2", "cv.repeats=2", *TINY,
                              "train.epochs=1", "train.seed=7", "cv.seed=3"]))  # fmt: skip
    progress = [line for line in out.splitlines() if " of 4): accuracy " in line]
    assert [line.split(": ")[1] for line in progress] == [
        "fold-1-of-2-seed-7 (1 of 4)", "fold-2-of-2-seed-7 (2 of 4)",
        "fold-1-of-2-seed-8 (3 of 4)", "fold-2-of-2-seed-8 (4 of 4)",
    ]  # fmt: skip
    exp = env["client"].get_experiment_by_name(EXPERIMENT)
    [job] = env["client"].search_runs(
        [exp.experiment_id],
        filter_string="tags.`imgclf.cv` = '2 grouped folds over train, 2 training seeds'",
    )
    m = job.data.metrics
    assert m["cv_repeats"] == 2 and m["cv_folds"] == 2 and m["cv_n"] == 48
    assert m["cv_accuracy_seed_std"] >= 0
    runs = children(env, job.info.run_id)
    cells = sorted((r.data.tags["imgclf.seed"], r.data.tags["imgclf.fold"]) for r in runs)
    assert cells == [("7", "1"), ("7", "2"), ("8", "1"), ("8", "2")]
    assert all(r.data.params["train.seed"] == r.data.tags["imgclf.seed"] for r in runs)
    assert sorted(r.info.run_name.rsplit("-", 1)[0] for r in runs) == [
        "fold-1-of-2-seed-7", "fold-1-of-2-seed-8", "fold-2-of-2-seed-7", "fold-2-of-2-seed-8"
    ]  # fmt: skip
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r.data.tags["imgclf.seed"], []).append(r.data.metrics["fold_accuracy"])
    means = [sum(v) / 2 for v in by_seed.values()]
    assert abs(sum(means) / 2 - m["cv_accuracy"]) < 1e-9
    local = env["client"].download_artifacts(
        job.info.run_id, "cv/predictions.csv", str(env["work"] / "repeats")
    )
    with open(local, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["seed"] for r in rows}) == ["7", "8"]
    for seed in ("7", "8"):  # every file predicted once per seed
        assert len({r["path"] for r in rows if r["seed"] == seed}) == 48
    assert len(rows) == 96

    # imgclf cv-report scores the job from its run id exactly as the job scored itself (its
    # bootstrap seeded by the run's cv.seed).
    report = subprocess.run(
        [CLI, "cv-report", job.info.run_id, "--json"], env=env["env"], cwd=env["work"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    together = json.loads(report.stdout)["together"]
    for key in ("cv_accuracy", "cv_accuracy_ci95_low", "cv_accuracy_ci95_high",
                "cv_accuracy_seed_std", "cv_macro_f1_ci95_high"):  # fmt: skip
        assert together[key] == m[key], key


@pytest.mark.slow  # Optuna through imgclf-train's sweeper: CI runs the slow group
def test_an_optuna_sweep_optimises_the_cv_mean(env):
    args = optuna_args(env, "cv", 1, "cv=grouped5", "cv.folds=2", "hydra.sweeper.pruner.name=none")
    out = finish(launch(env, args))
    [trial] = load(env, "cv").trials
    assert trial.state == TrialState.COMPLETE
    run = env["client"].get_run(trial.user_attrs["mlflow_run_id"])
    assert trial.value == run.data.metrics["cv_accuracy"]
    assert len(children(env, run.info.run_id)) == 2
    assert "1 done" in out


@pytest.mark.slow
def test_a_cv_trial_is_pruned_between_folds(env):
    storage = f"sqlite:///{env['work'] / 'cvprune.db'}"
    study = optuna.create_study(study_name="cvprune", storage=storage, direction="maximize")
    study.set_user_attr("objective", "val_accuracy")
    study.add_trial(optuna.trial.create_trial(value=2.0, intermediate_values={0: 2.0, 1: 2.0}))
    args = optuna_args(env, "cvprune", 2, *CV3, "hydra.sweeper.pruner.n_startup_trials=1",
                       "hydra.sweeper.pruner.n_warmup_steps=0")  # fmt: skip
    finish(launch(env, args))
    trial = load(env, "cvprune").trials[1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    run = env["client"].get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert len(children(env, run.info.run_id)) == 1  # the later folds never ran


def test_a_sweep_refuses_to_pool_the_test_set(env):
    args = [EXE, "-m", *CV3, "cv.pool=all", "optimizer=adam,sgd", *TINY]
    proc = subprocess.run(args, cwd=env["work"], env=env["env"], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "cv.pool" in line]
    assert lines and "never for choosing" in lines[0], proc.stderr[-2000:]
