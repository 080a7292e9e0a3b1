"""imgclf.data.synth: the synthetic card dataset is deterministic, balanced, valid, and its planted
copies are exactly the leakage that validation finds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from imgclf import cli
from imgclf.data.synth import MANIFEST, TEST_DIR, TRAIN_DIR, SynthError, write_synthetic
from imgclf.images import open_image
from imgclf.leakage import dhash
from imgclf.validate import validate_dataset
from tests.conftest import tiny_config

N, CLASSES, SEED = 300, 5, 7


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", N, seed=SEED, workers=2)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


def _dhash(path: Path) -> int:
    rgb, _ = open_image(path)
    return int(dhash(rgb), 16)


def test_the_same_seed_writes_the_same_bytes_with_any_number_of_workers(synth, tmp_path) -> None:
    again = write_synthetic(tmp_path / "one", N, seed=SEED, workers=1)
    assert _digests(again.root) == _digests(synth.root)
    assert (again.root / MANIFEST).read_bytes() == (synth.root / MANIFEST).read_bytes()
    other = write_synthetic(tmp_path / "other", 40, seed=SEED + 1, test_fraction=0.25, workers=1)
    assert not set(_digests(other.root).values()) & set(_digests(synth.root).values())


def test_counts_per_class_and_split(synth) -> None:
    names = [f"class_{k}" for k in range(CLASSES)]
    assert synth.classes == names
    on_disk = {
        split: {c: len(list((synth.root / split / c).glob("*.jpg"))) for c in names}
        for split in (TRAIN_DIR, TEST_DIR)
    }
    assert on_disk == synth.counts
    assert synth.counts[TRAIN_DIR] == dict.fromkeys(names, 48)  # 240 / 5
    assert synth.counts[TEST_DIR] == dict.fromkeys(names, 12)  # 60 / 5
    assert len(synth.exact) == len(synth.near) == 6  # 2 % of 300 each
    assert json.loads((synth.root / MANIFEST).read_text())["counts"] == synth.counts


def test_exact_copies_are_training_files_byte_for_byte_in_the_test_split(synth) -> None:
    digests = _digests(synth.root)
    for copy, source in synth.exact:
        assert copy.startswith(f"{TEST_DIR}/") and source.startswith(f"{TRAIN_DIR}/")
        assert copy.split("/")[1] == source.split("/")[1]  # the same class
        assert digests[copy] == digests[source]
    sources = [s for _, s in synth.exact] + [s for _, s, _ in synth.near]
    assert len(set(sources)) == len(sources)  # each copy its own training file
    # Nothing else is a byte copy: 300 files, 6 of them duplicates.
    assert len(set(digests.values())) == N - len(synth.exact)


def test_near_copies_are_new_bytes_within_dhash_distance_3(synth) -> None:
    root = synth.root
    assert {v for _, _, v in synth.near} == {"quality", "brightness"}
    distances = []
    for copy, source, _ in synth.near:
        assert (root / copy).read_bytes() != (root / source).read_bytes()
        distances.append((_dhash(root / copy) ^ _dhash(root / source)).bit_count())
    assert max(distances) <= 3, distances  # 2,000 copies measured: all within 3 (BENCHMARKS.md)


def test_every_file_validates_and_the_leakage_found_is_exactly_the_planted_copies(synth) -> None:
    v = validate_dataset(synth.root, tiny_config().data, (TRAIN_DIR, TEST_DIR))
    assert v.usable and not v.rejected and not v.ignored
    assert len(v.rows) == N
    assert min(min(r["width"], r["height"]) for r in v.rows) >= 180
    assert min(r["width"] for r in v.rows) >= 300 and max(r["width"] for r in v.rows) <= 900
    portrait = sum(r["height"] > r["width"] for r in v.rows)
    assert 0 < portrait < N // 3  # cards mostly, some pages
    d = v.duplicates["summary"]
    assert d["leaky_test_files_exact"] == len(synth.exact)
    # No accidental twins among the originals: every leak found is a planted copy.
    assert d["leaky_test_files"] == len(synth.exact) + len(synth.near)
    assert d["near_groups_within_split"] == 0 and d["label_conflicts"] == 0
    leaky = {r["path"] for r in v.rows if r["leak"]}  # both ends of each train/test pair
    planted = [(c, s) for c, s in synth.exact] + [(c, s) for c, s, _ in synth.near]
    assert leaky == {c for c, _ in planted} | {s for _, s in planted}


def test_impossible_requests_and_a_non_empty_folder_are_refused(
    synth, tmp_path, monkeypatch
) -> None:
    with pytest.raises(SynthError, match="do not fit"):
        write_synthetic(tmp_path / "a", 100, exact_fraction=0.1, near_fraction=0.1, workers=1)
    with pytest.raises(SynthError, match="at least"):
        write_synthetic(tmp_path / "b", 8, workers=1)
    with pytest.raises(SynthError, match="not an empty folder"):
        write_synthetic(synth.root, 40, workers=1)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(SynthError, match="the current folder"):
        write_synthetic(".", 40, workers=1)  # the rename into place would replace the cwd


def test_the_cli_writes_the_dataset_and_says_so_in_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert cli.main(["synth", "--out", str(out), "--n", "60", "--classes", "3", "--seed", "1"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "60 JPEGs (48 train, 12 test, 3 classes" in line
    assert len(_digests(out)) == 60
    assert cli.main(["synth", "--out", str(out), "--n", "60"]) == 2  # exists: one-line refusal
