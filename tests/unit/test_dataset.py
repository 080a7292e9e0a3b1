import pytest
from PIL import Image

from imgclf.dataset import DatasetError, scan_dataset

SPLITS = ("Training_data", "Testing_Data")


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10)).save(path, format="PNG")


def _layout(root, classes=("a", "b")):
    for split in SPLITS:
        for c in classes:
            _img(root / split / c / "1.png")
    return root


def test_classes_come_from_folders(tmp_path):
    scan = scan_dataset(_layout(tmp_path, ("zeta", "alpha")), SPLITS)
    assert scan.classes == ["alpha", "zeta"]
    assert len(scan.files) == 4


def test_hidden_entries_are_ignored_and_counted(tmp_path):
    root = _layout(tmp_path)
    (root / "Training_data" / "a" / ".DS_Store").write_bytes(b"junk")
    (root / "Training_data" / "a" / "._1.png").write_bytes(b"junk")
    (root / "Training_data" / "Thumbs.db").write_bytes(b"junk")
    (root / "Training_data" / ".ipynb_checkpoints").mkdir()
    scan = scan_dataset(root, SPLITS)
    assert scan.classes == ["a", "b"]
    assert len(scan.files) == 4
    assert len(scan.ignored) == 4


def test_empty_class_is_an_error_naming_it(tmp_path):
    root = _layout(tmp_path)
    (root / "Testing_Data" / "c").mkdir()
    (root / "Training_data" / "c").mkdir()
    with pytest.raises(DatasetError, match="c: class folder is empty"):
        scan_dataset(root, SPLITS)


def test_class_missing_from_one_split(tmp_path):
    root = _layout(tmp_path)
    _img(root / "Training_data" / "extra" / "1.png")
    with pytest.raises(DatasetError, match="extra"):
        scan_dataset(root, SPLITS)


def test_missing_root_says_dvc_pull(tmp_path):
    with pytest.raises(DatasetError, match="dvc pull"):
        scan_dataset(tmp_path / "absent", SPLITS)
