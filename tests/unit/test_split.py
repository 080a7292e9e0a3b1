import numpy as np

from imgclf.stages.preprocess import split_train_val


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], [40, 20, 60])
    tr, va = split_train_val(labels, 0.25, seed=3)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    counts = np.bincount(labels[va], minlength=3)
    np.testing.assert_array_equal(counts, [10, 5, 15])
    tr2, va2 = split_train_val(labels, 0.25, seed=3)
    np.testing.assert_array_equal(va, va2)
    _, va3 = split_train_val(labels, 0.25, seed=4)
    assert not np.array_equal(va, va3)
