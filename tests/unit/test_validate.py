"""`imgclf validate` and ingest's validation on generated bad and duplicated files.

Every bad input must end in a listed reject or a one-line error naming it, never a traceback.
"""

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from imgclf import artifacts, cli, images
from imgclf.stages import ingest
from tests.conftest import tiny_config, write_params
from tests.unit.test_leakage import smooth_image

TRAIN, TEST = "Training_data", "Testing_Data"


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _save(arr: np.ndarray, path, fmt="PNG", **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)
    return path


def clean_dataset(root, classes=("cards", "letters"), n_train=4, n_test=2):
    """Distinct smooth images; no duplicates anywhere."""
    seed = 100
    for split, n in ((TRAIN, n_train), (TEST, n_test)):
        for cls in classes:
            for i in range(n):
                seed += 1
                _save(smooth_image(seed), root / split / cls / f"{i}.png")
    return root


@pytest.fixture
def messy(tmp_path):
    """Every bad-input case of the issue, plus planted exact and resized train/test copies."""
    root = clean_dataset(tmp_path / "messy")
    bad = root / TRAIN / "cards"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a picture")
    buf = io.BytesIO()
    Image.fromarray(smooth_image(7)).save(buf, format="JPEG")
    (bad / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _save(np.zeros((1, 1, 3), np.uint8), bad / "dot.png")
    (bad / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    good = root / TRAIN / "letters"
    _save(smooth_image(8), good / "png_named.jpg", "PNG")
    Image.fromarray(smooth_image(9)).convert("CMYK").save(good / "cmyk.jpg", format="JPEG")
    Image.fromarray(np.full((40, 50), 40000, np.uint16)).save(good / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth_image(10)).save(good / "rotated.jpg", format="JPEG", exif=exif.tobytes())
    _save(smooth_image(11), good / "führerschein_é.png")
    for hidden in (".DS_Store", "._0.png", "Thumbs.db"):
        (good / hidden).write_bytes(b"junk")
    (root / TRAIN / ".ipynb_checkpoints").mkdir()
    # Planted leakage: a byte copy and a half-size copy of training images in the test split.
    src = root / TRAIN / "cards" / "0.png"
    (root / TEST / "cards" / "copy.png").write_bytes(src.read_bytes())
    small = Image.open(root / TRAIN / "letters" / "1.png").resize((90, 60))
    small.save(root / TEST / "letters" / "small.jpg", format="JPEG", quality=95)
    params = write_params(
        tmp_path / "params.yaml", tiny_config(data={"max_rejected_fraction": 0.5})
    )
    return root, params


def _validate_json(capsys, *args):
    code = cli.main(["validate", *map(str, args), "--json"])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, json.loads(out.out) if out.out.strip() else None


def test_validate_lists_each_bad_file_with_its_reason(messy, capsys):
    root, params = messy
    code, rep = _validate_json(capsys, root, "--params", params)
    assert code == 0 and rep["usable"]
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in rep["rejected"]}
    assert reasons == {
        "zero.jpg": images.EMPTY_FILE,
        "text.jpg": images.NOT_AN_IMAGE,
        "cut.jpg": images.UNDECODABLE,
        "dot.png": images.TOO_SMALL,
        "bomb.png": images.TOO_LARGE,
    }
    assert rep["n_ignored"] == 4
    assert rep["counts"] == {TRAIN: {"cards": 4, "letters": 9}, TEST: {"cards": 3, "letters": 3}}
    assert rep["layout"] == "train_test"


def test_validate_finds_planted_exact_and_resized_copies(messy, capsys):
    root, params = messy
    _, rep = _validate_json(capsys, root, "--params", params)
    s = rep["duplicates"]
    assert (s["exact_groups"], s["exact_groups_across_splits"]) == (1, 1)
    assert (s["leaky_test_files"], s["leaky_test_files_exact"], s["n_test"]) == (2, 1, 6)
    leaks = {r["path"]: r for r in rep["leakage"]["leakage"]}
    assert leaks[f"{TEST}/cards/copy.png"]["twins"][0]["path"] == f"{TRAIN}/cards/0.png"
    twin = leaks[f"{TEST}/letters/small.jpg"]["twins"][0]
    assert twin["path"] == f"{TRAIN}/letters/1.png" and not twin["exact"]
    assert twin["distance"] <= 3
    assert s["label_conflicts"] == 0


def test_validate_text_report_and_unusable_exit(messy, capsys, caplog):
    root, _ = messy
    # Default limit 5 %: 5 of 24 files rejected -> not usable, exit 1, the folder named.
    code = cli.main(["validate", str(root)])
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT USABLE" in out and "cut.jpg\tundecodable" in out
    assert "Leakage: 2 of 6 test files" in out
    assert f"{root}: 5 of 24 files rejected" in caplog.text


def test_validate_single_folder_of_classes(tmp_path, capsys):
    root = clean_dataset(tmp_path / "one") / TRAIN
    code, rep = _validate_json(capsys, root)
    assert code == 0 and rep["layout"] == "single"
    assert rep["counts"] == {".": {"cards": 4, "letters": 4}}
    assert rep["duplicates"]["n_test"] == 0


@pytest.mark.parametrize(
    "case",
    ["empty_class", "class_in_one_split", "escaping_symlink", "missing_test_split", "missing_root"],
)
def test_unusable_layouts_exit_2_naming_the_folder(tmp_path, capsys, caplog, case):
    root = clean_dataset(tmp_path / "ds")
    if case == "empty_class":
        (root / TRAIN / "empty").mkdir()
        (root / TEST / "empty").mkdir()
        named = str(root / TRAIN / "empty")
    elif case == "class_in_one_split":
        _save(smooth_image(1), root / TRAIN / "extra" / "a.png")
        named = "extra"
    elif case == "escaping_symlink":
        outside = _save(smooth_image(2), tmp_path / "elsewhere" / "x.png")
        link = root / TEST / "cards" / "link.png"
        os.symlink(outside, link)
        named = f"{link}: symlink escapes the dataset root"
    elif case == "missing_test_split":
        import shutil

        shutil.rmtree(root / TEST)
        named = str(root / TEST)
    else:
        root = tmp_path / "absent"
        named = str(root)
    code = cli.main(["validate", str(root)])
    out = capsys.readouterr()
    assert code == 2
    (line,) = out.err.splitlines()  # one line, `imgclf <command>: <message>`
    assert line.startswith("imgclf validate: ") and named in line
    assert "Traceback" not in out.out + out.err + caplog.text


def test_symlink_inside_the_root_is_followed(tmp_path, capsys):
    root = clean_dataset(tmp_path / "ds")
    os.symlink(root / TRAIN / "cards" / "0.png", root / TRAIN / "cards" / "alias.png")
    code, rep = _validate_json(capsys, root)
    assert code == 0 and rep["counts"][TRAIN]["cards"] == 5
    assert rep["duplicates"]["exact_groups"] == 1


@pytest.mark.integration  # real MLflow store, converters or processes
def test_ingest_over_the_limit_fails_its_mlflow_run_and_keeps_the_report(
    messy, tmp_path, mlflow_store
):
    root, _ = messy
    cfg = tiny_config(data={"min_side": 8, "max_rejected_fraction": 0.1})
    out = tmp_path / "ingest"
    with pytest.raises(ingest.IngestError, match="5 of 24 files rejected"):
        ingest.run(cfg, in_dir=root, out_dir=out)
    report = json.loads((out / "report.json").read_text())
    assert report["n_rejected"] == 5 and not report["usable"]
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    run = MlflowClient(mlflow_store).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics["leaky_test_files"] == 2
    card = (out / "dataset_card.md").read_text()
    assert "2 of 6 test files have a training twin" in card and "bomb.png" in card


def test_ingest_index_marks_leaky_test_files_and_groups(messy, tmp_path):
    root, _ = messy
    cfg = tiny_config(data={"min_side": 8, "max_rejected_fraction": 0.5})
    res = ingest.run(cfg, in_dir=root, out_dir=tmp_path / "ingest", track=False)
    assert (res.n_rejected, res.n_leaky_test, res.exact_groups_across_splits) == (5, 2, 1)
    rows = {r["path"]: r for r in artifacts.IngestOutputs(tmp_path / "ingest").read_index()}
    assert rows[f"{TEST}/cards/copy.png"]["leak"] == "1"
    assert rows[f"{TRAIN}/cards/0.png"]["leak"] == "1"
    assert rows[f"{TEST}/cards/0.png"]["leak"] == "0"
    assert rows[f"{TRAIN}/letters/führerschein_é.png"]["width"] == "180"
    assert rows[f"{TRAIN}/letters/rotated.jpg"]["height"] == "180"  # EXIF applied


@pytest.mark.integration  # real MLflow store, converters or processes
def test_ingest_cli_over_the_limit_exits_2_with_one_line(
    messy, tmp_path, mlflow_store, caplog, capsys
):
    root, _ = messy
    params = write_params(
        tmp_path / "limits.yaml", tiny_config(data={"max_rejected_fraction": 0.1})
    )
    code = cli.main(
        ["ingest", "--params", str(params), "--data", str(root), "--out", str(tmp_path / "out")]
    )
    out = capsys.readouterr()
    assert code == 2
    assert out.err.startswith("imgclf ingest: ") and out.err.count("\n") == 1
    assert "5 of 24 files rejected (20.8% > data.max_rejected_fraction=10.0%)" in out.err
    assert "Traceback" not in out.out + out.err + caplog.text
