"""Real id-cards data: the leakage measured in DATA.md must be found (slow: decodes 750 files)."""

from pathlib import Path

import pytest

from imgclf.config import DataConfig
from imgclf.validate import validate_dataset

DATA = Path(__file__).resolve().parents[2] / "data" / "id-cards"


@pytest.mark.slow
def test_idcards_leakage_matches_data_notes():
    if not DATA.is_dir():
        pytest.skip("data/id-cards not pulled (run `dvc pull data.dvc`)")
    v = validate_dataset(DATA, DataConfig(), ("Training_data", "Testing_Data"))
    s = v.duplicates["summary"]
    assert (v.report["n_accepted"], v.report["n_rejected"]) == (750, 0)
    assert s["exact_groups_across_splits"] == 64
    assert (s["n_test"], s["leaky_test_files"]) == (150, 91)
    assert s["label_conflicts"] == 0
