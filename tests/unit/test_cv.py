"""Grouped cross-validation's folds and summary (imgclf.cv), on synthetic labels and groups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from imgclf import cv
from imgclf.artifacts import PreprocessOutputs
from imgclf.config import ConfigError
from imgclf.sweeps.crossval import check_pool
from tests.conftest import tiny_config

CLASSES = ["a", "b", "c"]


def _labels_and_groups(n_groups: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)  # twins and triplets, as near-duplicates come
    groups = np.repeat(np.arange(n_groups), sizes)
    y = np.repeat(np.arange(n_groups) % 3, sizes)  # a group never spans two classes
    return y, groups


def test_connected_groups_are_transitive():
    near = np.zeros((5, 5), bool)
    near[0, 1] = near[1, 2] = near[3, 4] = True  # 0-1-2 chained, 3-4 a pair
    groups = cv.connected_groups(near | near.T)
    assert groups[0] == groups[1] == groups[2] != groups[3] == groups[4]


def test_folds_cover_every_file_once_and_never_split_a_group():
    y, groups = _labels_and_groups()
    folds = cv.grouped_folds(y, groups, 5, seed=1)
    held = np.concatenate([b for _, b in folds])
    assert sorted(held) == list(range(len(y)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == {0, 1, 2}  # stratified: every class in every fold


def test_fold_rows_keep_the_held_out_part_out_of_training_and_early_stopping(tmp_path):
    y, groups = _labels_and_groups()
    x = np.zeros((len(y), 1, 1, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(len(y)) % 256, np.arange(len(y)) // 256
    pre = PreprocessOutputs(tmp_path)  # each "image" spells its own index
    h = len(y) // 2  # the pool spans two subsets
    pre.write_arrays({"train": (x[:h], y[:h]), "val": (x[h:], y[h:])}, CLASSES)
    rows = pre.reader().pool(["train", "val"])
    pool = cv.Pool(rows=rows, y=y, groups=groups, paths=[str(i) for i in range(len(y))])
    fold = cv.grouped_folds(y, groups, 5, seed=1)[0]

    def ids(r):
        image = r.rows(np.arange(r.n)).astype(int)  # read through the shards
        got = image[:, 0, 0, 0] + 256 * image[:, 0, 0, 1]
        assert np.array_equal(r.labels, y[got])
        return got

    refit = cv.fold_rows(pool, fold, refit=True, val_fraction=0.2, seed=0)
    assert refit["val"].n == 0 and sorted(ids(refit["train"])) == list(fold[0])
    inner = cv.fold_rows(pool, fold, refit=False, val_fraction=0.2, seed=0)
    fit_ids, val_ids, test_ids = (set(ids(inner[k])) for k in ("train", "val", "test"))
    assert fit_ids | val_ids == set(fold[0]) and test_ids == set(fold[1])
    assert not set(groups[list(fit_ids)]) & set(groups[list(val_ids)])


def test_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    got = cv.scores(cv.confusion(y_true, y_pred, 3), CLASSES)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    per_class = f1_score(y_true, y_pred, average=None)
    assert [got[f"f1_{c}"] for c in CLASSES] == pytest.approx(list(per_class))


def test_a_stack_of_confusion_matrices_scores_as_each_one_alone():
    """What the bootstrap relies on: score_array over replicates x cells x n x n."""
    rng = np.random.default_rng(4)
    stack = rng.integers(0, 9, (4, 5, 3, 3))
    stack[0, 0] = 0  # an empty cell: zeros, not NaN
    stack[1, 2, :, 1] = 0  # a class never predicted
    scored = cv.score_array(stack)
    assert scored.shape == (4, 5, len(cv.score_names(CLASSES)))
    for i, j in np.ndindex(4, 5):
        alone = cv.scores(stack[i, j], CLASSES)
        assert dict(zip(cv.score_names(CLASSES), scored[i, j], strict=True)) == alone


def test_summary_is_the_mean_over_folds_with_its_spread_and_an_interval_around_it():
    y, groups = _labels_and_groups(n_groups=200)
    folds = cv.grouped_folds(y, groups, 5, seed=0)
    fold_of = np.zeros(len(y), int)
    for i, (_, held) in enumerate(folds):
        fold_of[held] = i
    y_pred = y.copy()
    wrong = np.random.default_rng(0).random(len(y)) < 0.1
    y_pred[wrong] = (y_pred[wrong] + 1) % 3
    s = cv.summarize(y, y_pred, fold_of, groups, CLASSES, replicates=500)
    per_fold = [float((y_pred[fold_of == f] == y[fold_of == f]).mean()) for f in range(5)]
    assert s["cv_accuracy"] == pytest.approx(np.mean(per_fold))
    assert s["cv_accuracy_std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert s["cv_accuracy_ci95_low"] < s["cv_accuracy"] < s["cv_accuracy_ci95_high"]
    assert s["cv_accuracy_ci95_high"] - s["cv_accuracy_ci95_low"] < 0.1
    assert s["cv_folds"] == 5 and s["cv_n"] == len(y)


def test_repeats_average_over_seeds_and_widen_the_interval_by_their_spread():
    y, groups = _labels_and_groups(n_groups=200)
    fold_of = np.zeros(len(y), int)
    for i, (_, held) in enumerate(cv.grouped_folds(y, groups, 5, seed=0)):
        fold_of[held] = i
    rng = np.random.default_rng(1)
    runs = []  # three training seeds: 2 %, 6 % and 10 % of the files wrong
    for rate in (0.02, 0.06, 0.10):
        y_pred = y.copy()
        wrong = rng.random(len(y)) < rate
        y_pred[wrong] = (y_pred[wrong] + 1) % 3
        runs.append(y_pred)
    one = [cv.summarize(y, p, fold_of, groups, CLASSES, replicates=300) for p in runs]
    stacked = [np.tile(a, 3) for a in (y, fold_of, groups)]
    s = cv.summarize(*stacked[:1], np.concatenate(runs), *stacked[1:], CLASSES,
                     repeat_of=np.repeat([42, 43, 44], len(y)), replicates=300)  # fmt: skip
    accs = [o["cv_accuracy"] for o in one]
    assert s["cv_accuracy"] == pytest.approx(np.mean(accs))
    assert s["cv_accuracy_seed_std"] == pytest.approx(np.std(accs, ddof=1))
    assert s["cv_repeats"] == 3 and s["cv_n"] == len(y) and s["cv_folds"] == 5
    # The folds' spread is of their scores averaged over the seeds.
    per_fold = [np.mean([(p[fold_of == f] == y[fold_of == f]).mean() for p in runs])
                for f in range(5)]  # fmt: skip
    assert s["cv_accuracy_std"] == pytest.approx(np.std(per_fold, ddof=1))
    # Resampling the seeds too: wider than any one seed's interval.
    width = s["cv_accuracy_ci95_high"] - s["cv_accuracy_ci95_low"]
    assert width > max(o["cv_accuracy_ci95_high"] - o["cv_accuracy_ci95_low"] for o in one)
    assert s["cv_accuracy_ci95_low"] < s["cv_accuracy"] < s["cv_accuracy_ci95_high"]
    assert "cv_accuracy_seed_std" not in one[0] and one[0]["cv_repeats"] == 1
    # One repeat named explicitly is the plain summary, interval and all.
    assert cv.summarize(y, runs[0], fold_of, groups, CLASSES, replicates=300,
                        repeat_of=np.full(len(y), 7)) == one[0]  # fmt: skip


def test_perfect_predictions_have_a_degenerate_interval():
    y, groups = _labels_and_groups()
    fold_of = np.arange(len(y)) % 3
    s = cv.summarize(y, y, fold_of, groups, CLASSES, replicates=100)
    assert s["cv_accuracy"] == s["cv_accuracy_ci95_low"] == s["cv_accuracy_ci95_high"] == 1.0


def test_a_sweep_may_not_pool_the_test_set():
    cfg = tiny_config(cv={"folds": 5, "pool": "all"})
    check_pool(cfg, sweeping=False)  # measuring one recipe: allowed
    with pytest.raises(ConfigError, match="cv.pool=all"):
        check_pool(cfg, sweeping=True)
    with pytest.raises(ConfigError, match="cv.folds"):
        tiny_config(cv={"folds": 1})
