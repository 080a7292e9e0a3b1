import numpy as np
import pytest
from PIL import Image

from imgclf.leakage import Item, dhash, find_duplicates, hamming_matrix
from imgclf.metrics import leakage_metrics, wilson_interval
from imgclf.stages.preprocess import split_train_val


def smooth_image(seed: int, height: int = 120, width: int = 180) -> np.ndarray:
    """Low-frequency random image: distinct seeds give far-apart difference hashes."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


def test_dhash_is_close_for_a_resized_copy_and_far_for_another_image():
    a = smooth_image(1)
    resized = np.asarray(Image.fromarray(a).resize((90, 60), Image.Resampling.BILINEAR))
    d = hamming_matrix([dhash(a), dhash(resized), dhash(smooth_image(2))])
    assert d[0, 0] == 0 and d[0, 1] <= 3
    assert d[0, 2] > 10
    assert len(dhash(a)) == 16


def _items():
    h = {k: dhash(smooth_image(k)) for k in range(6)}
    near0 = dhash(np.asarray(Image.fromarray(smooth_image(0)).resize((90, 60))))
    return [
        Item("tr/x/0.png", "x", "tr", "s0", h[0]),
        Item("tr/x/0copy.png", "x", "tr", "s0", h[0]),  # exact, within train
        Item("tr/x/1.png", "x", "tr", "s1", h[1]),
        Item("tr/y/2.png", "y", "tr", "s2", h[2]),
        Item("tr/y/1dup.png", "y", "tr", "s1", h[1]),  # same bytes under another class
        Item("te/x/0.png", "x", "te", "s0", h[0]),  # exact twin of train 0 and 0copy
        Item("te/x/0small.png", "x", "te", "s9", near0),  # resized twin of train 0
        Item("te/y/3.png", "y", "te", "s3", h[3]),  # clean
        Item("te/y/4.png", "y", "te", "s4", h[4]),  # clean
    ]


def test_find_duplicates_reports_exact_near_conflicts_and_leakage():
    items = _items()
    rep = find_duplicates(items, 3, "tr", "te")
    s = rep["summary"]
    assert s["exact_groups"] == 2 and s["exact_groups_across_splits"] == 1
    assert s["label_conflicts"] == 1
    conflict = rep["label_conflicts"][0]
    assert {conflict["a_class"], conflict["b_class"]} == {"x", "y"} and conflict["exact"]
    assert (s["n_test"], s["leaky_test_files"], s["leaky_test_files_exact"]) == (4, 2, 1)
    assert s["leakfree_test_files"] == 2
    by_path = {r["path"]: r for r in rep["leakage"]}
    assert set(by_path) == {"te/x/0.png", "te/x/0small.png"}
    assert [t["path"] for t in by_path["te/x/0.png"]["twins"]] == ["tr/x/0.png", "tr/x/0copy.png"]
    assert by_path["te/x/0.png"]["min_distance"] == 0
    small = by_path["te/x/0small.png"]
    assert not small["exact"] and 0 <= small["min_distance"] <= 3
    assert rep["leak"] == [True, True, False, False, False, True, True, False, False]
    g = rep["group"]
    assert g[0] == g[1] and g[2] == g[4] and g[3] not in (g[0], g[2])
    assert g[5] == g[6] and g[5] != g[0]  # groups never cross splits
    assert g[7] != g[8]


def test_distance_zero_still_finds_exact_but_not_resized():
    s = find_duplicates(_items(), 0, "tr", "te")["summary"]
    assert s["leaky_test_files"] in (1, 2)  # the resized copy may hash identically
    assert s["leaky_test_files_exact"] == 1


def test_single_split_has_no_leakage_section():
    s = find_duplicates(_items()[:5], 3, None, None)["summary"]
    assert s["n_test"] == 0 and s["leaky_test_files"] == 0 and s["exact_groups"] == 2


def test_wilson_interval_matches_reference_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_leakage_metrics_split_accuracy_by_leak_flag():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 0, 2, 1])
    leak = np.array([True, True, True, False, False, False])
    m = leakage_metrics(y_true, y_pred, leak, ["a", "b", "c"])
    assert (m["n_leakfree"], m["n_leaky"]) == (3, 3)
    assert m["leakfree_accuracy"] == pytest.approx(1 / 3)
    assert m["leaky_accuracy"] == 1.0
    assert m["confusion_matrix_leakfree"] == [[0, 0, 0], [1, 0, 0], [0, 1, 1]]
    lo, hi = wilson_interval(1, 3)
    assert (m["leakfree_accuracy_ci95_low"], m["leakfree_accuracy_ci95_high"]) == (lo, hi)
    none = leakage_metrics(y_true, y_pred, np.ones(6, bool), ["a", "b", "c"])
    assert none["leakfree_accuracy"] is None and none["n_leakfree"] == 0


def test_group_split_keeps_each_group_on_one_side():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 60)
    groups = np.arange(len(labels))
    groups[:30] = np.repeat(np.arange(10), 3)  # ten triplets of near twins in class 0
    groups[60:70] = 1000  # one big group in class 1
    rng.shuffle(groups[120:])
    tr, va = split_train_val(labels, 0.2, seed=1, groups=groups)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    assert set(groups[tr]).isdisjoint(groups[va])
    counts = np.bincount(labels[va], minlength=3)
    assert all(8 <= c <= 16 for c in counts), counts  # stratified as far as groups allow
    _, va2 = split_train_val(labels, 0.2, seed=1, groups=groups)
    np.testing.assert_array_equal(va, va2)
