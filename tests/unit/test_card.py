"""The model card and the registry's tags: pure functions over the stage outputs' values."""

from __future__ import annotations

from imgclf import card

METRICS = {
    "accuracy": 0.9933,
    "accuracy_ci95_low": 0.9632,
    "accuracy_ci95_high": 0.9988,
    "leakfree_accuracy": 0.9831,
    "leakfree_accuracy_ci95_low": 0.9100,
    "leakfree_accuracy_ci95_high": 0.9970,
    "macro_f1": 0.9933,
    "leakfree_macro_f1": 0.9804,
    "n_test": 150,
    "n_leakfree": 59,
    "per_class": {
        "others": {"precision": 1.0, "recall": 0.98, "f1": 0.9899, "support": 50},
        "driving_license": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 50},
    },
}
SUMMARY = {"refit": True, "best_epoch": 60, "epochs_run": 60, "n_train": 600, "n_val": 0}


def test_kind_tells_a_smoke_test_from_an_experiment_and_a_release():
    assert card.version_kind(3, {"git_commit": "abc"}) == "smoke"
    assert card.version_kind(60, {"git_commit": "abc", "dvc_exp_name": "x"}) == "experiment"
    assert card.version_kind(60, {"git_commit": "abc-dirty"}) == "experiment"
    assert card.version_kind(60, {"git_commit": "abc"}) == "release"


def test_card_holds_the_numbers_with_intervals_per_class_parity_and_limits():
    text = card.render(
        name="idcards",
        version="7",
        kind="release",
        lineage={"data_md5": "a1b2.dir", "git_commit": "0123456789abcdef"},
        params={"model.name": "resnet", "train.epochs": 60},
        counts={"train": {"others": 160, "driving_license": 160}},
        train_summary=SUMMARY,
        metrics=METRICS,
        parity={"onnx": {"valid": True, "label_agreement": 1.0, "max_abs_diff": 1.3e-7}},
        input_spec={"image_height": 64, "image_width": 96, "fit": "crop_tall"},
    )
    assert text.startswith("# idcards v7 — release\n")
    assert "| **leak-free accuracy** | **98.3 %** | 91.0 % – 99.7 % | 59 |" in text
    assert "| accuracy (all test images) | 99.3 % | 96.3 % – 99.9 % | 150 |" in text
    assert "91 of its 150 images" in text
    assert "| driving_license | 1.000 | 1.000 | 1.000 | 50 |" in text
    assert "`a1b2.dir`" in text and "`0123456789ab`" in text
    assert "refit on train + validation (600 images) for 60 epochs" in text
    assert "| onnx | yes | 1.0000 | 1.3e-07 |" in text
    assert "## Intended use" in text and "## Known limits" in text


def test_summary_table_is_short_and_names_the_intervals():
    lines = card.summary_table(METRICS, SUMMARY).splitlines()
    assert len(lines) == 6
    assert lines[1].split() == ["leak-free", "accuracy", "0.983", "0.910", "-", "0.997", "59"]
    assert "60/60" in lines[-1] and lines[-1].endswith("refit on train + val")
