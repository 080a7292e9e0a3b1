"""The one tiny pipeline every integration module builds on.

ingest -> preprocess -> train -> evaluate run once per test session on the tiny dataset, into a
real SQLite MLflow store. A module that needs trained artifacts takes its own copy
(:func:`copy_trained`): the stage outputs and a consistent snapshot of the store (SQLite's
backup API), so modules can export, register and promote without seeing each other's versions,
and nobody trains the same tiny model twice.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imgclf import artifacts
from imgclf.config import Config
from imgclf.stages import evaluate, ingest, preprocess, train
from tests.conftest import tiny_config

DVC_EXP_NAME = "tiny-exp"
DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"


def write_data_dvc(folder: Path, md5: str) -> None:
    """A data.dvc like the project's, pinning ``md5`` (what lineage tags and promote read)."""
    (folder / "data.dvc").write_text(
        f"outs:\n- md5: {md5}\n  size: 1\n  nfiles: 66\n  hash: md5\n  path: id-tiny\n"
    )


@dataclass(frozen=True)
class TrainedTiny:
    """The session's tiny pipeline: its folder, config, stage results and store."""

    work: Path
    data: Path
    cfg: Config
    results: dict[str, Any]

    @property
    def art(self) -> Path:
        return self.work / "artifacts"

    @property
    def preprocess_dir(self) -> Path:
        return artifacts.PreprocessOutputs.in_project(self.work).root


def store_uri(work: Path) -> str:
    return f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def trained_tiny(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedTiny:
    """ingest, preprocess, train and evaluate on the tiny data, once per session (read-only)."""
    work = tmp_path_factory.mktemp("trained-tiny")
    (work / "mlruns").mkdir()
    write_data_dvc(work, DATA_MD5)  # the runs' lineage pins this data hash
    cfg = tiny_config()
    art = work / "artifacts"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store_uri(work))
        mp.setenv("DVC_EXP_NAME", DVC_EXP_NAME)
        mp.chdir(work)
        results: dict[str, Any] = {
            "ingest": ingest.run(cfg, in_dir=tiny_dataset, out_dir=art / "ingest"),
            "preprocess": preprocess.run(
                cfg, data_dir=tiny_dataset, ingest_dir=art / "ingest", out_dir=art / "preprocess"
            ),
            "train": train.run(cfg, in_dir=art / "preprocess", out_dir=art / "train"),
        }
        results["evaluate"] = evaluate.run(
            cfg,
            preprocess_dir=art / "preprocess",
            train_dir=art / "train",
            out_dir=art / "evaluate",
        )
    return TrainedTiny(work, tiny_dataset, cfg, results)


def copy_trained(trained: TrainedTiny, dst: Path) -> str:
    """Copy the session pipeline's outputs and store into ``dst``; return the copy's store URI.

    The copy's runs keep their ids, so export and promote reopen the training run there. Run
    artifacts stay where the session logged them (the experiment's artifact location is
    absolute); a copy's new runs get new ids and never collide.
    """
    shutil.copytree(trained.art, dst / "artifacts")
    shutil.copy(trained.work / "data.dvc", dst / "data.dvc")
    (dst / "mlruns").mkdir(parents=True)
    src = sqlite3.connect(trained.work / "mlruns" / "mlflow.db")
    copy = sqlite3.connect(dst / "mlruns" / "mlflow.db")
    try:
        src.backup(copy)
    finally:
        src.close()
        copy.close()
    return store_uri(dst)
