"""Real id-cards data: the leakage measured in DATA.md must be found (slow: decodes 750 files)."""

from pathlib import Path

import pytest

from imgclf.compose import compose_config
from imgclf.validate import validate_dataset

ROOT = Path(__file__).resolve().parents[2]
# The DVC-tracked copy when pulled, else the shared original beside the checkout (as in CI).
CANDIDATES = (ROOT / "data" / "id-cards", ROOT.parent / "shared" / "datasets" / "id-cards")
DATA = next((p for p in CANDIDATES if p.is_dir()), CANDIDATES[0])


@pytest.mark.slow
def test_idcards_leakage_matches_data_notes():
    if not DATA.is_dir():
        pytest.skip("neither data/id-cards (`dvc pull data.dvc`) nor ../shared/datasets/id-cards")
    data_cfg = compose_config(ROOT / "conf").data
    v = validate_dataset(DATA, data_cfg, ("Training_data", "Testing_Data"))
    s = v.duplicates["summary"]
    assert (v.report["n_accepted"], v.report["n_rejected"]) == (750, 0)
    assert s["exact_groups_across_splits"] == 64
    assert (s["n_test"], s["leaky_test_files"]) == (150, 91)
    assert s["label_conflicts"] == 0
