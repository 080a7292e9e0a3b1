"""All five stages chained on the tiny synthetic dataset, against a real SQLite MLflow store."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from imgclf import artifacts, cli
from imgclf.stages import evaluate, export, train
from tests.conftest import REPO_ROOT, tiny_config, write_params
from tests.integration.conftest import DVC_EXP_NAME, copy_trained

pytestmark = pytest.mark.numerics  # rerun under every oneDNN ISA cap (tests/isa.py)


@pytest.fixture(scope="module")
def pipeline(trained_tiny, tmp_path_factory):
    """The session's tiny pipeline plus this module's own export; the paths, results and store."""
    work = tmp_path_factory.mktemp("pipeline")
    uri = copy_trained(trained_tiny, work)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("DVC_EXP_NAME", DVC_EXP_NAME)
    mp.chdir(work)
    cfg = trained_tiny.cfg
    art = work / "artifacts"
    res = dict(trained_tiny.results)
    res["export"] = export.run(
        cfg,
        preprocess_dir=art / "preprocess",
        train_dir=art / "train",
        evaluate_dir=art / "evaluate",
        out_dir=art / "export",
    )
    mlflow.set_tracking_uri(uri)
    yield {"cfg": cfg, "art": art, "res": res, "uri": uri, "data": trained_tiny.data}
    mp.undo()


def test_ingest_indexes_every_file(pipeline):
    r = pipeline["res"]["ingest"]
    assert r.classes == ["alpha", "beta", "gamma"]
    assert (r.n_accepted, r.n_rejected) == (66, 0)
    header = (pipeline["art"] / "ingest" / "index.csv").read_text().splitlines()[0]
    assert header == "path,class,split,sha256,width,height,dhash,group,leak"
    # The tiny data's vertical stripes repeat with only 4 phases: five beta training images and
    # one beta test image share a dHash. The report finds them; ingest logged its own run.
    report = json.loads((pipeline["art"] / "ingest" / "report.json").read_text())
    dups = report["duplicates"]
    assert dups["exact_groups"] == 0 and dups["label_conflicts"] == 0
    assert (dups["leaky_test_files"], dups["leakfree_test_files"]) == (1, 17)
    leakage = json.loads((pipeline["art"] / "ingest" / "leakage.json").read_text())
    assert leakage["leakage"][0]["path"] == "Testing_Data/beta/beta_04.png"
    assert len(leakage["leakage"][0]["twins"]) == 5
    client = MlflowClient(pipeline["uri"])
    run = client.get_run(r.run_id)
    assert run.info.run_name.startswith("ingest-") and run.data.tags["imgclf.stage"] == "ingest"
    assert run.data.metrics["leaky_test_files"] == 1
    names = {a.path for a in client.list_artifacts(r.run_id, "ingest")}
    assert {"ingest/dataset_card.md", "ingest/leakage.json", "ingest/image_sizes.png"} <= names
    assert "ingest/dataset_card.html" in names  # figures inlined: MLflow renders it


def test_preprocess_writes_shards_and_plots(pipeline):
    art = pipeline["art"] / "preprocess"
    reader = artifacts.PreprocessOutputs(art).reader()
    reader.verify()  # every file's sha256 matches the manifest
    assert reader.image_shape == (32, 48, 3) and reader.subset("train")[:2].dtype == np.uint8
    counts = reader.counts
    assert counts["train"] + counts["val"] == 48 and counts["test"] == 18
    val = reader.subset("val").labels
    assert all(3 <= c <= 6 for c in np.bincount(val, minlength=3))  # ~val_fraction
    spec = {"image_height": 32, "image_width": 48, "fit": pipeline["cfg"].data.fit}
    assert reader.params == spec  # the params that made the shards
    # The near-duplicate group sits wholly on one side of the train/val split.
    with (art / "split.csv").open() as f:
        rows = list(csv.DictReader(f))
    sides: dict[str, set[str]] = {}
    for r in rows:
        if r["subset"] != "test":
            sides.setdefault(r["group"], set()).add(r["subset"])
    assert max(map(len, sides.values())) == 1 and len(sides) == 43
    assert [r["path"] for r in rows if r["leak"] == "1" and r["subset"] == "test"] == [
        "Testing_Data/beta/beta_04.png"
    ]
    for name in ("class_counts.png", "sample_grid.png"):
        assert (art / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_learns_the_visible_patterns(pipeline):
    t = pipeline["res"]["train"]
    assert 1 <= t.best_epoch <= t.epochs_run <= 4
    assert t.val_accuracy >= 0.9


def test_refit_trains_on_train_plus_val_for_every_epoch(pipeline, tmp_path):
    """train.refit: one training set of train + val, no early stopping, the last epoch kept."""
    cfg = tiny_config(train={"refit": True, "patience": 1})
    art = pipeline["art"]
    t = train.run(cfg, in_dir=art / "preprocess", out_dir=tmp_path / "train")
    assert (t.best_epoch, t.epochs_run) == (4, 4)  # patience 1 would have stopped a validated fit
    assert t.val_accuracy is None and t.val_loss is None
    summary = json.loads((tmp_path / "train" / "train.json").read_text())
    assert summary["refit"] is True and (summary["n_train"], summary["n_val"]) == (48, 0)
    assert 0.0 <= summary["train_accuracy"] <= 1.0 and "val_accuracy" not in summary
    # Same columns as a validated run, val cells empty, so `dvc plots` can compare the two.
    lines = (tmp_path / "train" / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,loss,accuracy,val_loss,val_accuracy" and len(lines) == 5
    assert all(line.endswith(",,") for line in lines[1:])
    assert set(artifacts.TrainOutputs(tmp_path / "train").read_history()) == {"loss", "accuracy"}
    client = MlflowClient(pipeline["uri"])
    run = client.get_run(t.run_id)
    assert run.data.params["train.refit"] == "True"
    assert len(client.get_metric_history(t.run_id, "loss")) == 4
    assert "val_loss" not in run.data.metrics and "best_val_accuracy" not in run.data.metrics
    assert run.data.metrics["best_train_accuracy"] == summary["train_accuracy"]
    # The refit model goes through evaluate like any other (learning curves without val).
    res = evaluate.run(
        cfg,
        preprocess_dir=art / "preprocess",
        train_dir=tmp_path / "train",
        out_dir=tmp_path / "evaluate",
    )
    assert res.accuracy >= 0.85
    assert (tmp_path / "evaluate" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_file_for_dvc(pipeline):
    metrics = json.loads((pipeline["art"] / "evaluate" / "metrics.json").read_text())
    assert 0.9 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    # Headline scalars only (dvc metrics show prints a column per key); per class: its own file.
    assert all(not isinstance(v, dict | list) for v in metrics.values())
    per_class = json.loads((pipeline["art"] / "evaluate" / "per_class.json").read_text())
    assert set(per_class) == {"alpha", "beta", "gamma"}
    assert sum(m["support"] for m in per_class.values()) == 18
    assert (metrics["n_test"], metrics["n_leakfree"], metrics["n_leaky"]) == (18, 17, 1)
    assert 0.85 <= metrics["leakfree_accuracy"] <= 1.0
    low, high = metrics["leakfree_accuracy_ci95_low"], metrics["leakfree_accuracy_ci95_high"]
    assert low < metrics["leakfree_accuracy"] <= high
    assert metrics["accuracy_ci95_low"] < metrics["accuracy"] <= metrics["accuracy_ci95_high"]
    confusion = json.loads((pipeline["art"] / "evaluate" / "confusion.json").read_text())
    assert sum(map(sum, confusion["confusion_matrix_leakfree"])) == 17
    rows = (pipeline["art"] / "evaluate" / "predictions_leakfree.csv").read_text().splitlines()
    assert len(rows) == 18
    rows = (pipeline["art"] / "evaluate" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted,probability" and len(rows) == 19


def test_mlflow_run_has_params_epochs_tags_and_figures(pipeline):
    client = MlflowClient(pipeline["uri"])
    run = client.get_run(pipeline["res"]["train"].run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.name"] == "adam"
    assert run.data.params["model.filters"] == "8"
    assert run.data.tags["dvc_exp_name"] == "tiny-exp"
    assert {"git_commit", "data_md5"} <= set(run.data.tags)
    epochs = pipeline["res"]["train"].epochs_run
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(client.get_metric_history(run.info.run_id, key)) == epochs
    assert run.data.metrics["test_accuracy"] == pytest.approx(pipeline["res"]["evaluate"].accuracy)
    assert run.data.metrics["test_leakfree_accuracy"] == pytest.approx(
        pipeline["res"]["evaluate"].leakfree_accuracy
    )
    assert run.data.metrics["test_n_leakfree"] == 17
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert "evaluate/metrics.json" in names and "evaluate/predictions.csv" in names
    # Figures at the top level, where MLflow's compare view puts two runs' files side by side.
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "learning_curves.png", "misclassified.png"} <= top


def test_registered_version_holds_an_h5_that_predicts(pipeline, tmp_path):
    client = MlflowClient(pipeline["uri"])
    exp = pipeline["res"]["export"]
    assert exp.version == "1" and sorted(exp.aliases) == ["challenger", "champion"]
    mv = client.get_model_version_by_alias("tiny-model", "champion")
    assert str(mv.version) == "1"
    assert mv.tags["git_commit"] and mv.tags["data_md5"]
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/tiny-model/{mv.version}", dst_path=str(tmp_path)
        )
    )
    # The MLflow model's own .h5, plus formats/ with every exported format (issue 6).
    h5_files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*.h5"))
    assert h5_files == ["data/model.h5", "formats/model.h5"]
    assert (local / "formats" / "model.onnx").is_file()
    assert (local / "formats" / "saved_model" / "saved_model.pb").is_file()
    model = keras.models.load_model(local / "formats" / "model.h5", compile=False)
    x = artifacts.PreprocessOutputs(pipeline["art"] / "preprocess").reader().subset("test")[:]
    probs = model.predict(x, verbose=0)
    assert probs.shape == (18, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_second_export_reuses_the_version_and_new_settings_move_challenger_only(pipeline):
    p, cfg = pipeline, pipeline["cfg"]
    dirs = {
        "preprocess_dir": p["art"] / "preprocess",
        "train_dir": p["art"] / "train",
        "evaluate_dir": p["art"] / "evaluate",
    }
    # The same trained model again (a forced `dvc repro`): its version, not a new one.
    again = export.run(cfg, **dirs, out_dir=p["art"] / "export2")
    assert again.reused and again.version == "1"
    assert sorted(again.aliases) == ["challenger", "champion"]
    manifest = "formats/manifest.json"
    assert (p["art"] / "export2" / manifest).read_bytes() == (
        p["art"] / "export" / manifest
    ).read_bytes()
    # Other export settings make other files: a new version, and only @challenger moves.
    other = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, parity_samples=7))
    new = export.run(other, **dirs, out_dir=p["art"] / "export3")
    client = MlflowClient(p["uri"])
    assert not new.reused and new.version == "2" and new.aliases == ["challenger"]
    assert str(client.get_model_version_by_alias("tiny-model", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny-model", "challenger").version) == "2"


def test_predict_cli_with_registry_uri_and_file(pipeline, capsys):
    folder = pipeline["data"] / "Testing_Data" / "beta"
    code = cli.main(["predict", str(folder), "--model", "models:/tiny-model@champion", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 6
    assert sum(r["label"] == "beta" for r in out) >= 5
    assert all(0.0 <= r["probability"] <= 1.0 for r in out)

    h5 = pipeline["art"] / "export" / "formats" / "model.h5"
    one = folder / "beta_00.png"
    assert cli.main(["predict", str(one), "--model", str(h5)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(one)) and line.split("\t")[1] in ("alpha", "beta", "gamma")


def test_predict_lists_unreadable_files(pipeline, tmp_path, capsys):
    (tmp_path / "note.jpg").write_text("not an image")
    code = cli.main(
        [
            "predict",
            str(tmp_path),
            "--model",
            str(pipeline["art"] / "export" / "formats" / "model.keras"),
        ]
    )
    assert code == 1
    assert "note.jpg\tERROR\tnot_an_image" in capsys.readouterr().out


def test_stage_cli_rejects_bad_params_naming_the_key(tmp_path, capsys, monkeypatch):
    bad = write_params(tmp_path / "params.yaml", tiny_config())
    bad.write_text(bad.read_text(encoding="utf-8").replace("epochs:", "epochz:"))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    code = cli.main(["train", "--params", str(bad), "--preprocess", "x", "--out", "y"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"imgclf train: {bad}: unknown key 'train.epochz' (did you mean 'train.epochs'?); "
        "fix it in conf/ and run `make params`\n"
    )
    # Under `dvc exp run` the bad value came from its -S override: say so, and how to undo.
    monkeypatch.setenv("DVC_EXP_NAME", "bold-yawl")
    assert cli.main(["train", "--params", str(bad), "--preprocess", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert "'train.epochz' (did you mean 'train.epochs'?); fix the `dvc exp run -S` override" in err
    assert "git restore params.yaml artifacts && dvc checkout" in err and err.count("\n") == 1


def test_no_absolute_paths_in_params_tags_or_artifacts(pipeline, tmp_path):
    """Runs are shared: what they record must not reveal home folders, local paths or secrets."""
    client = MlflowClient(pipeline["uri"])
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    forbidden = {
        str(pipeline["art"].parent),
        str(pipeline["data"]),
        str(REPO_ROOT),
        str(Path.home()),
        str(Path.cwd()),
    }
    runs = client.search_runs(exp_ids)
    assert len(runs) >= 2  # ingest's run and train's run
    seen = 0
    for run in runs:
        texts = {f"param {k}": v for k, v in run.data.params.items()}
        texts |= {f"tag {k}": v for k, v in run.data.tags.items()}
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id)
            )
        )
        for f in local.rglob("*"):
            if f.is_file() and f.suffix in (".json", ".yaml", ".txt", ".md", ".csv", ""):
                texts[f"artifact {f.relative_to(local)}"] = f.read_text(errors="replace")
                seen += 1
        for where, text in texts.items():
            for path in forbidden:
                assert path not in text, f"{run.info.run_name}: {where} contains {path}"
    assert seen > 5
    for path in forbidden:
        assert path not in (pipeline["art"] / "export" / "registered.json").read_text()
