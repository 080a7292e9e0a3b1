"""``imgclf predict`` keeps going past bad files and writes output safe for any file name.

The model is the small ONNX colour classifier of tests/integration/serve_models.py (no
TensorFlow), loaded through the same verification as an export folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from imgclf import cli
from tests.conftest import draw_class_image
from tests.integration.serve_models import write_export

ODD = 'new\nline\tand, "quoted" \\ name.png'  # a legal POSIX file name


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_export(tmp_path_factory.mktemp("model") / "export"))


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    for k, name in enumerate(("a_alpha.png", ODD, "c_gamma.png")):
        Image.fromarray(draw_class_image(k, rng)).save(folder / name, "PNG")
    (folder / "d_notes.png").write_text("not an image")
    Image.fromarray(draw_class_image(0, rng)[:6, :6]).save(folder / "e_tiny.png")
    return folder


def run(capsysbinary, *argv: str) -> tuple[int, bytes, str]:
    code = cli.main(["predict", *argv])
    out = capsysbinary.readouterr()
    return code, out.out, out.err.decode()


def test_keeps_going_past_missing_and_bad_files(model, files, capsysbinary):
    missing = str(files / "gone.jpg")
    code, out, err = run(capsysbinary, str(files), missing, "--model", model, "--output", "jsonl")
    assert code == 1 and "2 of 6 files could not be read" in err
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert [os.path.basename(r["path"]) for r in rows] == sorted(
        ["a_alpha.png", ODD, "c_gamma.png", "d_notes.png", "e_tiny.png"]
    ) + ["gone.jpg"]
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert by_name["a_alpha.png"]["label"] == "alpha" and by_name[ODD]["label"] == "beta"
    assert by_name["d_notes.png"]["error"].startswith("not_an_image")
    assert by_name["gone.jpg"]["error"].startswith("unreadable: No such file")
    tiny = by_name["e_tiny.png"]
    assert (tiny["label"], tiny["uncertain"]) == ("uncertain", "small_image")
    assert tiny["probability"] > 0.5  # the model is sure; the rule is not
    # Only missing paths: nothing to do, one line and the usage-error status.
    assert cli.main(["predict", missing, "--model", model]) == 2


def test_text_output_is_one_escaped_line_per_file(model, files, capsysbinary):
    code, out, _ = run(capsysbinary, str(files), "--model", model)
    lines = out.decode().splitlines()
    assert code == 1 and len(lines) == 5
    odd = next(line for line in lines if "new" in line)
    assert odd.split("\t")[0].endswith('new\\nline\\tand, "quoted" \\\\ name.png')
    assert odd.split("\t")[1:] == ["beta", odd.split("\t")[2]]
    assert any(line.endswith("\tERROR\tnot_an_image: content is not a known image format")
               for line in lines)  # fmt: skip
    tiny = next(line for line in lines if "e_tiny.png" in line).split("\t")
    assert (tiny[1], tiny[3]) == ("uncertain", "small_image") and float(tiny[2]) > 0.5


def test_csv_and_json_round_trip_any_name(model, files, capsysbinary, tmp_path):
    raw_name = b"caf\xe9.png"  # Latin-1 bytes: not UTF-8
    if sys.platform != "linux":
        pytest.skip("names that are not UTF-8 are a POSIX-bytes case")
    shutil.copy(files / "a_alpha.png", os.fsdecode(os.fsencode(str(files)) + b"/" + raw_name))
    code, out, _ = run(capsysbinary, str(files), "--model", model, "--output", "csv")
    rows = list(csv.reader(io.StringIO(out.decode("utf-8", "surrogateescape"), newline="")))
    assert rows[0][:5] == ["path", "label", "probability", "uncertain", "error"]
    assert rows[0][5:] == ["p_alpha", "p_beta", "p_gamma"]
    names = {os.path.basename(r[0]): r for r in rows[1:]}
    assert set(names) == {"a_alpha.png", ODD, "c_gamma.png", "d_notes.png", "e_tiny.png",
                          os.fsdecode(raw_name)}  # fmt: skip
    assert os.fsencode(next(r[0] for r in rows[1:] if r[0].endswith(".png") and "caf" in r[0]))\
        .endswith(raw_name)  # fmt: skip
    alpha = names["a_alpha.png"]
    assert alpha[1] == "alpha" and float(alpha[2]) == pytest.approx(float(alpha[5]))
    code, out, _ = run(capsysbinary, str(files), "--model", model, "--json")
    listed = json.loads(out)
    assert ODD in {os.path.basename(r["path"]) for r in listed} and len(listed) == 6


def test_the_confidence_rule_defaults():
    from imgclf.answers import LOW_CONFIDENCE, UNCERTAIN, ConfidenceRule, Prediction

    rule = ConfidenceRule()
    assert rule.min_side_for((64, 96)) == 32 and rule.min_side_for((32, 48)) == 16
    assert rule.min_probability_for(3) == pytest.approx(0.4)
    assert rule.min_probability_for(2) == pytest.approx(0.55)
    probs = {"a": 0.39, "b": 0.31, "c": 0.30}
    low = rule.judge(Prediction("x", "a", 0.39, dict(probs)), 100, (64, 96))
    assert (low.label, low.uncertain) == (UNCERTAIN, LOW_CONFIDENCE)
    sure = rule.judge(Prediction("x", "a", 0.41, {**probs, "a": 0.41}), 32, (64, 96))
    assert (sure.label, sure.uncertain) == ("a", None)
    off = ConfidenceRule(min_probability=0.0, min_side=0)  # both checks turned off
    assert off.judge(Prediction("x", "a", 0.39, dict(probs)), 1, (64, 96)).label == "a"
