"""Export to every format, the promotion gate, verified loading and reloading, end to end.

One module fixture trains the tiny model once and registers two real versions in a real SQLite
MLflow store: v1 a deliberately useless copy (output layer zeroed: uniform probabilities, so it
always answers the first class, accuracy exactly 1/3) that export makes the first champion, and
v2 the trained model, the challenger. No mocks: every check goes through the real registry,
the real converters and runtimes (the HTTP server's own tests: test_serve.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from imgclf import artifacts, cli, registry, tracking
from imgclf.artifacts import FORMAT_FILES
from imgclf.config import FORMAT_NAMES
from imgclf.fileio import read_json
from imgclf.predict import ModelLoadError, load_model
from imgclf.predictors import IntegrityError, sha256_file, verify_files
from imgclf.promote import Measured, judge
from imgclf.stages import evaluate, export
from tests.conftest import TINY_CLASSES, draw_class_image, tiny_config, write_params
from tests.integration.conftest import DATA_MD5, copy_trained, write_data_dvc

NAME = "tiny-model"


def useless_copy(train_dir: Path, out: Path) -> Path:
    """``train_dir``'s model with its output layer zeroed: uniform softmax, always class 0."""
    out.mkdir(parents=True)
    model = keras.models.load_model(train_dir / "model.keras", safe_mode=True)
    layer = model.get_layer("probs")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    model.save(out / "model.keras")
    for name in ("run.json", "history.csv", "train.json"):
        shutil.copy(train_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def reg(trained_tiny, tmp_path_factory):
    work = tmp_path_factory.mktemp("promote")
    uri = copy_trained(trained_tiny, work)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.chdir(work)
    cfg = trained_tiny.cfg
    art = work / "artifacts"
    shutil.move(art / "evaluate", art / "evaluate_train")
    useless_copy(art / "train", art / "train_bad")
    evaluate.run(
        cfg, preprocess_dir=art / "preprocess", train_dir=art / "train_bad",
        out_dir=art / "evaluate_train_bad",
    )  # fmt: skip
    exports = {}
    for t, out in (("train_bad", "export_bad"), ("train", "export")):
        exports[t] = export.run(
            cfg,
            preprocess_dir=art / "preprocess",
            train_dir=art / t,
            evaluate_dir=art / f"evaluate_{t}",
            out_dir=art / out,
        )
    params = write_params(work / "params.yaml", cfg)  # what promote and registry read
    tracking.configure()
    yield {
        "work": work,
        "art": art,
        "cfg": cfg,
        "uri": uri,
        "data": trained_tiny.data,
        "bad": exports["train_bad"],
        "good": exports["train"],
        "params": str(params),
    }
    mp.undo()


def promote_cli(reg, *extra: str) -> int:
    return cli.main(
        [
            "promote",
            "--params",
            reg["params"],
            "--preprocess",
            str(reg["art"] / "preprocess"),
            *extra,
        ]
    )


def champion() -> str:
    return tracking.get_version(NAME, alias="champion").version


# --- export -------------------------------------------------------------------------------------


def test_export_registers_every_format_with_parity_and_hashes(reg):
    good = reg["good"]
    assert (reg["bad"].version, good.version) == ("1", "2")
    assert reg["bad"].aliases == ["challenger", "champion"] and good.aliases == ["challenger"]
    assert good.valid_formats == list(FORMAT_NAMES) and good.invalid_formats == {}
    info = tracking.get_version(NAME, version="2")
    assert info.tags["formats"] == "h5,keras,saved_model,tflite,onnx"
    assert info.tags["data_md5"] == DATA_MD5
    # How new images must be prepared travels with the model (data.fit, input size).
    spec = {"image_height": 32, "image_width": 48, "fit": reg["cfg"].data.fit}
    assert read_json(reg["art"] / "export" / "formats" / "input.json") == spec
    assert info.tags["image_fit"] == spec["fit"]
    parity = read_json(reg["art"] / "export" / "parity.json")
    for fmt in FORMAT_NAMES:
        assert info.tags[f"format.{fmt}"] == "valid"
        assert parity[fmt]["valid"] and parity[fmt]["label_agreement"] == 1.0
        assert parity[fmt]["n_images"] == 18  # every tiny test image (parity_samples 32)
        assert 0.0 <= parity[fmt]["max_abs_diff"] <= 1e-4
    # Keras formats run the very same graph: bit-identical probabilities.
    assert parity["h5"]["max_abs_diff"] == parity["keras"]["max_abs_diff"] == 0.0
    folder = reg["art"] / "export" / "formats"
    manifest = read_json(folder / "manifest.json")
    # The version's tags are the filterable ones: one hash (the manifest's), no per-file hash,
    # parity number or run id (the card, the run and the version's own fields hold those).
    assert info.tags[registry.MANIFEST_SHA_TAG] == sha256_file(folder / "manifest.json")
    assert not [k for k in info.tags if k.startswith(("sha256.", "parity.")) or k == "run_id"]
    assert registry.expected_hashes(info, folder) == manifest
    assert {
        "model.h5",
        "model.keras",
        "model.tflite",
        "model.onnx",
        "saved_model/saved_model.pb",
    } <= set(manifest)
    for fmt in FORMAT_NAMES:  # every file in the export folder matches its recorded hash
        verify_files(reg["art"] / "export" / "formats", FORMAT_FILES[fmt], manifest)
    client = MlflowClient()
    source = client.get_model_version(NAME, "2").source  # models:/<logged model id>
    logged = client.get_logged_model(source.removeprefix("models:/"))
    model_metrics = {m.key: m.value for m in logged.metrics}
    for fmt in FORMAT_NAMES:  # the parity results are metrics of the version's model too
        assert model_metrics[f"parity_{fmt}_valid"] == 1.0
        assert model_metrics[f"parity_{fmt}_max_abs_diff"] == parity[fmt]["max_abs_diff"]
    run = client.get_run(good.run_id)
    assert run.data.metrics["parity_onnx_valid"] == 1.0
    assert run.data.metrics["parity_tflite_label_agreement"] == 1.0


def test_every_format_predicts_the_same_through_predict(reg, capsys):
    folder = reg["data"] / "Testing_Data"
    answers = {}
    for fmt in FORMAT_NAMES:
        assert (
            cli.main(
                [
                    "predict",
                    str(folder),
                    "--model",
                    str(reg["art"] / "export" / "formats"),
                    "--format",
                    fmt,
                    "--json",
                ]
            )
            == 0
        )
        answers[fmt] = json.loads(capsys.readouterr().out)
    keras_probs = np.array([[r["probabilities"][c] for c in TINY_CLASSES] for r in answers["h5"]])
    truth = [Path(r["path"]).parent.name for r in answers["h5"]]
    assert (
        len(truth) == 18
        and np.mean([r["label"] == t for r, t in zip(answers["h5"], truth, strict=True)]) >= 0.85
    )
    for fmt, rows in answers.items():
        assert [r["label"] for r in rows] == [r["label"] for r in answers["h5"]], fmt
        probs = np.array([[r["probabilities"][c] for c in TINY_CLASSES] for r in rows])
        np.testing.assert_allclose(probs, keras_probs, atol=1e-4, err_msg=fmt)
    # No --format: ONNX (fast start-up), from the registry and from the export folder alike.
    assert load_model(f"models:/{NAME}/2").format == "onnx"
    assert load_model(str(reg["art"] / "export")).format == "onnx"
    # The registry's copy of each format gives the same answers as the export folder's.
    onnx = load_model(f"models:/{NAME}/2", "onnx")
    x = artifacts.PreprocessOutputs(reg["art"] / "preprocess").reader().subset("test")[:]
    np.testing.assert_allclose(
        onnx.predictor.predict(x),
        load_model(f"models:/{NAME}/2", "tflite").predictor.predict(x),
        atol=1e-4,
    )


def test_failed_parity_is_not_registered_as_valid(reg):
    """A bound no converter can meet: the Keras formats pass (identical bytes of math), the
    converted ones that differ at all are refused, each with its reason, and left out."""
    cfg = tiny_config(export={"parity_max_abs_diff": 1e-30})
    art = reg["art"]
    res = export.run(
        cfg,
        preprocess_dir=art / "preprocess",
        train_dir=art / "train",
        evaluate_dir=art / "evaluate_train",
        out_dir=art / "export_strict",
    )
    parity = read_json(art / "export_strict" / "parity.json")
    failed = {f for f in FORMAT_NAMES if parity[f]["max_abs_diff"] > 1e-30}
    assert failed, "expected at least one converted format to differ from Keras at 1e-30"
    assert set(res.invalid_formats) == failed and {"h5", "keras"}.isdisjoint(failed)
    info = tracking.get_version(NAME, version=res.version)
    for fmt in failed:
        assert info.tags[f"format.{fmt}"].startswith("invalid: max probability difference")
        assert fmt not in info.tags["formats"].split(",")
        assert not (art / "export_strict" / "formats" / FORMAT_FILES[fmt]).exists()
        with pytest.raises(ModelLoadError, match=f"no valid {fmt}"):
            load_model(f"models:/{NAME}/{res.version}", fmt)
    # With no --format, predict and serve take the ONNX file where it passed, else the .h5.
    fallback = "h5" if "onnx" in failed else "onnx"
    assert load_model(f"models:/{NAME}/{res.version}").format == fallback
    assert load_model(str(art / "export_strict")).format == fallback
    tracking.delete_version(NAME, res.version)  # keep the other tests' registry as it was
    tracking.set_alias(NAME, "challenger", "2")


def test_export_that_cannot_finish_leaves_the_registry_as_it_was(reg):
    """MLflow refuses the alias "latest" (reserved), after the files and the version were
    stored: export must delete that version again rather than leave it half-registered."""
    before = [v.version for v in tracking.list_versions(NAME)]
    cfg = tiny_config(export={"challenger_alias": "latest", "parity_samples": 7})  # a new version
    art = reg["art"]
    with pytest.raises(Exception, match="latest"):
        export.run(
            cfg,
            preprocess_dir=art / "preprocess",
            train_dir=art / "train",
            evaluate_dir=art / "evaluate_train",
            out_dir=art / "export_failed",
        )
    assert [v.version for v in tracking.list_versions(NAME)] == before
    assert not (art / "export_failed" / "registered.json").exists()
    assert not (art / "export_failed" / "formats").exists()
    assert not list((art / "export_failed").glob(".export-*"))  # the staging folder is gone too


# --- integrity ----------------------------------------------------------------------------------


def test_tampered_files_are_refused(reg, tmp_path, capsys):
    copy = tmp_path / "export"
    shutil.copytree(reg["art"] / "export" / "formats", copy)
    for fmt in ("h5", "onnx", "tflite"):
        assert load_model(str(copy / FORMAT_FILES[fmt])).format == fmt
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.onnx: sha256 .* differs"):
        load_model(str(copy), "onnx")
    one = reg["data"] / "Testing_Data" / "alpha" / "alpha_00.png"
    assert cli.main(["predict", str(one), "--model", str(copy / "model.onnx")]) == 2
    # An extra file slipped into the SavedModel folder is refused as well.
    (copy / "saved_model" / "variables" / "extra.index").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="extra.index: not part of the exported model"):
        verify_files(copy, "saved_model", read_json(copy / "manifest.json"))
    capsys.readouterr()


def test_tampered_registry_file_is_refused(reg, tmp_path):
    """Bytes changed inside the MLflow store: loading the version through imgclf refuses."""
    info = tracking.get_version(NAME, version="1")
    base = MlflowClient().get_model_version_download_uri(NAME, "1")
    stored = Path(base.removeprefix("file://")) / "formats" / "model.keras"
    original = stored.read_bytes()
    listed = stored.parent / "manifest.json"
    original_manifest = listed.read_bytes()
    try:
        stored.write_bytes(original[:-10] + b"0123456789")
        with pytest.raises(IntegrityError, match="model.keras: sha256"):
            registry.load_version(info, "keras", tmp_path / "dl")
        # A manifest rewritten to match the changed file no longer matches the version's tag.
        manifest = read_json(listed) | {"model.keras": sha256_file(stored)}
        listed.write_text(json.dumps(manifest, indent=2))
        with pytest.raises(IntegrityError, match="manifest.json: missing, or its sha256 differs"):
            registry.load_version(info, "keras", tmp_path / "dl2")
    finally:
        stored.write_bytes(original)
        listed.write_bytes(original_manifest)


# --- promotion ----------------------------------------------------------------------------------


def test_judge_floors_and_margin():
    cfg = tiny_config(
        promote={"min_accuracy": 0.8, "min_leakfree_accuracy": 0.7, "min_margin": 0.05}
    )
    good = {"accuracy": 0.95, "leakfree_accuracy": 0.9}
    champ = Measured("1", "h", {"accuracy": 0.9, "leakfree_accuracy": 0.8})
    assert judge(cfg, Measured("2", "h", good), champ, "h") == []
    assert judge(cfg, Measured("2", "h", good), None, "h") == []
    # Beats the champion but under a floor.
    low = {"accuracy": 0.95, "leakfree_accuracy": 0.65}
    (why,) = judge(
        cfg, Measured("2", "h", low), Measured("1", "h", {"leakfree_accuracy": 0.5}), "h"
    )
    assert "leakfree_accuracy 0.6500 is below the floor 0.7000" in why
    # Better, but by less than the margin; a tie never moves the champion.
    near = {"accuracy": 0.95, "leakfree_accuracy": 0.83}
    assert "does not beat" in judge(cfg, Measured("2", "h", near), champ, "h")[0]
    tie_cfg = tiny_config(
        promote={"min_margin": 0.0, "min_accuracy": 0.5, "min_leakfree_accuracy": 0.5}
    )
    assert "does not beat" in judge(tie_cfg, Measured("2", "h", champ.metrics), champ, "h")[0]
    # Trained on other data than data.dvc pins.
    assert "not the" in judge(cfg, Measured("2", "other", good), champ, "h")[0]


def test_promote_refuses_a_candidate_trained_on_other_data(reg, capsys):
    write_data_dvc(reg["work"], "ffffffffffffffffffffffffffffffff.dir")
    try:
        assert promote_cli(reg) == 1
    finally:
        write_data_dvc(reg["work"], DATA_MD5)
    out = capsys.readouterr().out
    assert "REFUSED" in out and "not the ffffffffffff that data.dvc pins" in out
    assert champion() == "1"


def test_promote_accepts_a_better_candidate_and_records_it(reg, capsys):
    assert champion() == "1"
    assert promote_cli(reg) == 0  # default candidate: @challenger = v2
    out = capsys.readouterr().out
    assert "ACCEPTED: @champion -> v2" in out
    assert champion() == "2"
    moves = registry.history(NAME)
    assert [(m.from_version, m.to_version, m.forced) for m in moves] == [
        (None, "1", False),
        ("1", "2", False),
    ]
    last = moves[-1]
    assert last.metrics["candidate"]["accuracy"] >= 0.85
    assert last.metrics["champion"]["accuracy"] == pytest.approx(1 / 3)
    assert last.metrics["data_md5"] == DATA_MD5 and last.reason == "passed the gate"
    left = [
        k
        for k in tracking.get_version(NAME, version="1").tags
        if k.startswith(registry.LEFT_PREFIX)
    ]
    assert len(left) == 1


def test_promote_refuses_a_worse_candidate_and_prints_the_table(reg, capsys):
    assert champion() == "2"
    assert promote_cli(reg, "--version", "1") == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["candidate", "v1", "champion", "v2", "required"]
    acc_row = next(line for line in lines if line.startswith("accuracy "))
    assert acc_row.split()[1] == "0.3333"
    assert "accuracy 0.3333 is below the floor 0.8000" in out and "does not beat" in out
    assert champion() == "2"
    assert len(registry.history(NAME)) == 2  # a refusal moves nothing


def test_force_needs_a_reason_then_overrides_and_records_it(reg, capsys):
    assert promote_cli(reg, "--version", "1", "--force") == 2
    assert champion() == "2"
    assert promote_cli(reg, "--version", "1", "--force", "--reason", "rollback drill") == 0
    assert "FORCED: @champion -> v1" in capsys.readouterr().out
    assert champion() == "1"
    last = registry.history(NAME)[-1]
    assert (last.from_version, last.to_version, last.forced, last.reason) == (
        "2",
        "1",
        True,
        "rollback drill",
    )
    assert any("below the floor" in r for r in last.metrics["refusals_overridden"])
    # `imgclf registry` reads the whole history back, oldest first.
    assert cli.main(["registry", "--params", reg["params"], "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in desc["versions"]] == ["1", "2"]
    assert desc["versions"][0]["aliases"] == ["champion"]
    assert desc["versions"][1]["aliases"] == ["challenger"]
    assert [(h["to_version"], h["forced"]) for h in desc["history"]] == [
        ("1", False),
        ("2", False),
        ("1", True),
    ]
    assert cli.main(["registry", "--params", reg["params"]]) == 0
    text = capsys.readouterr().out
    assert "2 -> 1  FORCED  rollback drill" in text
    # Put v2 back as champion for the server test, through the gate.
    assert promote_cli(reg, "--version", "2") == 0
    capsys.readouterr()


# --- serving ------------------------------------------------------------------------------------


def test_server_follows_the_champion_without_a_restart(reg):
    """Promotion without a restart: the server's model holder reloads when @champion moves
    (what ``imgclf serve --poll``, SIGHUP and POST /reload do), through the verified loader.
    The HTTP side (each class's answer, 422 for a non-image, reload under load) is in
    tests/integration/test_serve.py."""
    import asyncio

    from imgclf.serving.holder import ModelHolder

    assert champion() == "2"
    spec = f"models:/{NAME}@champion"
    holder = ModelHolder(spec, "onnx", load_model(spec, "onnx"))
    served = holder.describe()
    assert served["model"] == f"models:/{NAME}/2" and served["format"] == "onnx"
    assert served["classes"] == list(TINY_CLASSES)
    unmoved = asyncio.run(holder.reload("poll", only_if_moved=True))
    assert unmoved["reloaded"] is False and holder.describe()["version"] == "2"
    x = artifacts.PreprocessOutputs(reg["art"] / "preprocess").reader().subset("test")[:6]
    tracking.set_alias(NAME, "champion", "1")
    try:
        moved = asyncio.run(holder.reload("poll", only_if_moved=True))
        assert moved == {
            "reloaded": True,
            "previous": f"models:/{NAME}/2",
            "model": f"models:/{NAME}/1",
        }
        probs = holder.current.predictor.predict(x)  # v1: the useless copy, uniform answers
        np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)
    finally:
        tracking.set_alias(NAME, "champion", "2")


def test_predict_prepares_files_with_the_models_fit(reg, tmp_path):
    """A portrait photo of a card: predict crops it as the model's data.fit says, whether the
    model comes from the export folder or the registry; an old export without input.json
    (trained before data.fit existed) stretches, as it was trained."""
    from imgclf.images import fit_aspect, open_image, resize
    from imgclf.predict import predict_files

    rng = np.random.default_rng(7)
    card = draw_class_image(1, rng)  # 40x60, the model's 3:2 aspect
    photo = np.concatenate([rng.integers(0, 255, (20, 60, 3), dtype=np.uint8), card] * 2)
    path = tmp_path / "portrait.png"
    Image.fromarray(photo[:80]).save(path)  # 80x60: taller than 3:2
    rgb = open_image(path)[0]
    folder = reg["art"] / "export" / "formats"
    for spec in (str(folder), f"models:/{NAME}/2"):
        loaded = load_model(spec, "onnx")
        assert loaded.fit == reg["cfg"].data.fit
        want = loaded.predictor.predict(resize(fit_aspect(rgb, 32, 48, loaded.fit), 32, 48)[None])
        (got,) = predict_files(loaded, [path])
        np.testing.assert_allclose([got.probabilities[c] for c in TINY_CLASSES], want[0], atol=1e-6)
    old = tmp_path / "old_export"
    shutil.copytree(folder, old)
    (old / "input.json").unlink()
    assert load_model(str(old), "onnx").fit == "stretch"


def test_onnx_predict_imports_no_heavy_framework(reg):
    """The one-file ONNX path stays light: no TensorFlow, Keras, MLflow, scikit-learn or
    matplotlib import (each costs seconds of start-up on 2 cores; a stray import of the
    preprocess stage once made `imgclf predict` 7x slower)."""
    image = next((reg["data"] / "Testing_Data" / "alpha").iterdir())
    code = (
        "import json, sys\n"
        "from imgclf import cli\n"
        f"rc = cli.main(['predict', {str(image)!r}, '--model', "
        f"{str(reg['art'] / 'export')!r}, '--format', 'onnx'])\n"
        "heavy = {'tensorflow', 'keras', 'mlflow', 'sklearn', 'matplotlib'}\n"
        "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules} & heavy)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert json.loads(proc.stdout.splitlines()[-1]) == [0, []], proc.stderr[-2000:]


def test_promote_measures_a_version_on_the_test_files_prepared_its_way(reg, tmp_path):
    """A version trained on another data.fit (an older champion, say) is measured on the same
    test files decoded and prepared its way; without the files it is refused, with a reason."""
    from imgclf.measure import measure, test_file_preparer

    info = tracking.get_version(NAME, version="2")
    pre = reg["art"] / "preprocess"
    test = artifacts.PreprocessOutputs(pre).reader().subset("test")
    kw = {"y": test.labels, "leak": np.zeros(test.n, bool), "classes": list(TINY_CLASSES)}
    fit = reg["cfg"].data.fit
    same = measure(info, reg["cfg"], x=test, **kw, fit=fit)  # read batch by batch
    assert same.problem == "" and same.prepared == "" and same.metrics["accuracy"] >= 0.85

    prepare = test_file_preparer(pre, reg["data"])
    # the files prepared as preprocess did are the cached test tensors, byte for byte
    assert np.array_equal(prepare(32, 48, fit), test[:])
    # tensors made with another fit (and size): the version is measured on its own preparation
    other = "stretch" if fit != "stretch" else "crop"
    x_other = prepare(24, 36, other)
    m = measure(info, reg["cfg"], x=x_other, **kw, fit=other, prepare=prepare)
    assert m.problem == "" and m.prepared == f"32x48, data.fit={fit}"
    assert m.metrics == same.metrics

    no_files = measure(info, reg["cfg"], x=x_other, **kw, fit=other)
    assert no_files.metrics == {} and f"data.fit={other}" in no_files.problem
    gone = test_file_preparer(pre, tmp_path / "not-pulled")
    missing = measure(info, reg["cfg"], x=x_other, **kw, fit=other, prepare=gone)
    assert missing.metrics == {} and "dvc pull" in missing.problem
    assert str(tmp_path / "not-pulled") in missing.problem


def test_promote_checks_the_test_tensors_against_data_dvc(tmp_path):
    """``data.dvc`` hashes ``data/``, the stages ``data/id-cards``: ``dvc status`` (a real DVC
    project here) tells whether the tensors promote evaluates on come from the pinned data."""
    from imgclf.promote import stale_test_data

    dvc = str(Path(sys.executable).with_name("dvc"))
    (tmp_path / "data" / "id-cards").mkdir(parents=True)
    (tmp_path / "data" / "id-cards" / "a.txt").write_text("a")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  preprocess:\n    cmd: cp data/id-cards/a.txt out.txt\n"
        "    deps:\n      - data/id-cards\n    outs:\n      - out.txt\n"
    )
    for cmd in (["init", "-q", "--no-scm"], ["add", "-q", "data"], ["repro", "-q"]):
        subprocess.run([dvc, *cmd], cwd=tmp_path, check=True, capture_output=True)
    assert stale_test_data(tmp_path) is None
    (tmp_path / "data" / "id-cards" / "a.txt").write_text("b")
    why = stale_test_data(tmp_path)
    assert why is not None and "preprocess: data/id-cards modified" in why
    assert stale_test_data(tmp_path / "data") is None  # not a DVC project: nothing to check
