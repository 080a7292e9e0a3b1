"""Commands with no store, no model or a misspelled alias say in one line what exists."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from imgclf import cli, tracking
from tests.conftest import tiny_config, write_params


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A store with model ``m``: one version, @champion and @challenger on it (one per module:
    a new SQLite store costs seconds of migrations)."""
    work = tmp_path_factory.mktemp("messages")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    mp.chdir(work)
    tracking.configure()
    client = MlflowClient()
    client.create_registered_model("m")
    version = client.create_model_version("m", source=work.as_uri()).version
    for alias in ("champion", "challenger"):
        client.set_registered_model_alias("m", alias, version)
    yield work
    mp.undo()


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_a_misspelled_alias_lists_the_aliases(store, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    assert cli.main(["predict", str(tmp_path / "x.png"), "--model", "models:/m@champoin"]) == 2
    assert _one_line(capsys) == (
        "imgclf predict: models:/m@champoin: model 'm' has no alias 'champoin'; "
        "aliases: challenger, champion"
    )
    assert cli.main(["predict", str(tmp_path / "x.png"), "--model", "models:/m/7"]) == 2
    assert _one_line(capsys).endswith("model 'm' has no version 7; versions: 1")


def test_registry_and_promote_without_the_model_name_the_models(store, tmp_path, capsys):
    params = str(write_params(tmp_path / "params.yaml", tiny_config()))
    assert cli.main(["registry", "--params", params]) == 2
    line = _one_line(capsys)
    assert line.startswith("imgclf registry: no registered model 'tiny-model' in sqlite:///")
    assert line.endswith("; models: m")
    # A clone without the model: the model is what is missing, not the data.
    assert cli.main(["promote", "--params", params]) == 2
    assert _one_line(capsys).startswith("imgclf promote: no registered model 'tiny-model'")


def test_predict_outside_a_project_creates_nothing(store, tmp_path, monkeypatch, capsys):
    work = tmp_path / "anywhere"
    work.mkdir()
    (work / "x.png").write_bytes(b"")
    monkeypatch.chdir(work)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["predict", "x.png"]) == 2
    line = _one_line(capsys)
    assert f"no MLflow store at {work / 'mlruns' / 'mlflow.db'}: nothing is registered" in line
    assert sorted(os.listdir(work)) == ["x.png"]
