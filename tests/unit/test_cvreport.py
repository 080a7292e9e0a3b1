"""``imgclf cv-report``: CV jobs' predictions files, written as a CV job writes them, scored
together (imgclf.sweeps.cvreport), and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf import cv
from imgclf.artifacts import CVOutputs
from imgclf.cli import main
from imgclf.config import ConfigError
from imgclf.sweeps import cvreport

CLASSES = ["driving_license", "others", "social_security"]
N = 90


def _pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = np.sort(rng.integers(0, 70, N))
    y = groups % 3  # a group never spans two classes
    return y, cv.grouped_folds(y, groups, 3, seed=1), groups


def _proba(y: np.ndarray, wrong: set[int], rng: np.random.Generator) -> np.ndarray:
    """Class probabilities whose argmax is ``y`` except at the files ``wrong``."""
    proba = rng.dirichlet(np.ones(3), len(y)) * 0.3
    picked = np.where(np.isin(np.arange(len(y)), list(wrong)), (y + 1) % 3, y)
    proba[np.arange(len(y)), picked] += 1.0
    return proba / proba.sum(axis=1, keepdims=True)


def _write(folder, seeds_wrong: dict[int, set[int]], *, seed_column: bool = True):
    """A predictions file as ``crossval._summarize`` writes it: one row per file and seed."""
    y, folds, groups = _pool()
    fold_of = np.empty(N, int)
    for f, (_, held) in enumerate(folds):
        fold_of[held] = f + 1
    rng = np.random.default_rng(len(seeds_wrong))
    header = ["path", "actual", "predicted", "probability", "fold", "group"]
    header += ["seed"] * seed_column + [f"p_{c}" for c in CLASSES]
    rows = []
    for seed, wrong in seeds_wrong.items():
        proba = _proba(y, wrong, rng)
        for i in range(N):
            p = proba[i].argmax()
            rows.append(
                [f"f{i:03}.jpg", CLASSES[y[i]], CLASSES[p], f"{proba[i, p]:.4f}", fold_of[i],
                 groups[i], *[seed] * seed_column, *(f"{v:.4f}" for v in proba[i])]
            )  # fmt: skip
    out = CVOutputs(folder)
    out.write_predictions(header, rows)
    return out.predictions, y, fold_of, groups


WRONG = {7: {1, 2, 3, 40}, 8: {1, 2, 50, 60, 70}, 9: {1, 2, 3}}


def test_jobs_run_apart_score_as_the_one_repeated_job_they_add_up_to(tmp_path):
    whole, y, fold_of, groups = _write(tmp_path / "whole", WRONG)
    parts = [_write(tmp_path / str(s), {s: w})[0] for s, w in WRONG.items()]

    one = cvreport.run([str(whole)])
    apart = cvreport.run([str(p.parent) for p in parts])  # a folder holding predictions.csv
    assert one.together == apart.together  # the same rows: the same figures, interval included
    assert [r.seed for r in apart.repeats] == ["7", "8", "9"]
    pred = np.concatenate([np.where(np.isin(np.arange(N), list(w)), (y + 1) % 3, y)
                           for w in WRONG.values()])  # fmt: skip
    expected = cv.summarize(np.tile(y, 3), pred, np.tile(fold_of, 3), np.tile(groups, 3),
                            CLASSES, repeat_of=np.repeat([0, 1, 2], N), seed=42)  # fmt: skip
    assert apart.together == expected
    assert apart.errors == [4, 5, 3]
    assert apart.each[2] == cv.summarize(y, pred[2 * N :], fold_of, groups, CLASSES, seed=42)
    assert apart.wrong_every == ["f001.jpg", "f002.jpg"]  # the files every seed misses
    assert apart.wrong_some == 7
    # The ensemble averages probabilities: the two files all three miss stay wrong; file 3,
    # missed by two of three, is likely wrong too; the ones only one seed misses are right.
    assert 2 <= apart.ensemble_errors <= 3

    text = cvreport.render(apart)
    assert "90 files, 3 grouped folds, 3 training seeds" in text
    assert "wrong under every seed: 2; under at least one: 7" in text
    assert "  f001.jpg" in text and "together" in text and "4.0  " in text


def test_the_cli_prints_json_and_refuses_what_cannot_be_scored_together(tmp_path, capsys):
    a = _write(tmp_path / "a", {7: {1}})[0]
    b = _write(tmp_path / "b", {8: {2}})[0]
    assert main(["cv-report", str(a), str(b), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in out["repeats"]] == ["7", "8"]
    assert out["together"]["cv_repeats"] == 2 and out["wrong_some"] == 2

    twice = _write(tmp_path / "c", {7: {3}})[0]
    assert main(["cv-report", str(a), str(twice)]) == 2
    assert "seed 7 is also in" in capsys.readouterr().err

    other = tmp_path / "other.csv"
    other.write_text(a.read_text().replace(",1,", ",2,", 1))  # one file in another fold
    assert main(["cv-report", str(b), str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{other} (seed 7): other files, folds or groups than {b}" in err

    bad = tmp_path / "bad.csv"
    bad.write_text("path,actual\nx.jpg,others\n")
    assert main(["cv-report", str(bad)]) == 2
    assert f"{bad}: not a CV predictions file (no column predicted, fold, group" in (
        capsys.readouterr().err
    )


def test_files_without_a_seed_column_are_one_repeat_each(tmp_path):
    a = _write(tmp_path / "a", {1: {4}}, seed_column=False)[0]
    b = _write(tmp_path / "b", {2: {5, 6}}, seed_column=False)[0]
    r = cvreport.run([str(a), str(b)])
    assert [x.seed for x in r.repeats] == ["?", "?"]
    assert r.together["cv_repeats"] == 2 and r.wrong_every == []


def test_an_unknown_source_names_itself_and_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["cv-report", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "0123456789abcdef: neither a file nor a run in sqlite:///" in err
    for path in ("missing.csv", str(tmp_path / "missing" / "predictions.csv"), "a'b"):
        assert main(["cv-report", path]) == 2
        assert f"{path}: no such file; give a cv/predictions.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cv-report"])  # at least one source


def test_runs_of_another_recipe_are_refused_by_their_params(tmp_path):
    a = _write(tmp_path / "a", {7: {1}})[0]
    b = _write(tmp_path / "b", {8: {2}})[0]
    recipe = {"model.filters": "32", "train.seed": "7", "cv.repeats": "1", "train.threads": "1"}
    same = recipe | {"train.seed": "8", "cv.repeats": "2", "train.threads": "0"}
    run_a = cvreport.Source("run a", a, "7", recipe)
    r = cvreport.report([run_a, cvreport.Source("run b", b, "8", same)])
    assert r.together["cv_repeats"] == 2  # seeds, repeats and threads leave the recipe alike
    other = same | {"model.filters": "16"}
    refusal = r"run b: another recipe than run a \(model.filters 32 vs 16\); jobs scored"
    with pytest.raises(ConfigError, match=refusal + " together must differ only in train.seed"):
        cvreport.report([run_a, cvreport.Source("run b", b, "8", other)])
    cvreport.report([run_a, cvreport.Source(str(b), b)])  # a file: no params to compare
