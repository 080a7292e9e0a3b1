"""data.engine=dask: ingest and preprocess on a real Dask cluster write what the local pool writes.

A ``distributed.LocalCluster`` with 2 worker processes stands in for a team's cluster: the
stages reach it by address, as they would reach ``tcp://scheduler:8786``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf import cli
from imgclf.errors import ImgclfError
from imgclf.parallel import Engine, EngineError, close_engines, map_files
from imgclf.stages import ingest, preprocess
from tests.conftest import tiny_config, write_dataset, write_params

# Differ by design: the MLflow run each ingest opens (ingest runs untracked here anyway).
NOT_COMPARED = {"mlflow_run.json"}


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local.scheduler_address
        close_engines()  # the stages' client, before its scheduler goes


def _run(cfg, data: Path, out: Path) -> dict[str, bytes]:
    ingest.run(cfg, in_dir=data, out_dir=out / "ingest", track=False)
    preprocess.run(cfg, data_dir=data, ingest_dir=out / "ingest", out_dir=out / "preprocess")
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in NOT_COMPARED
    }


def test_dask_cluster_outputs_are_byte_identical_to_the_local_pool(cluster, tmp_path):
    # 3 classes x (40 + 10) files: more than one Dask chunk per stage would need > 256 files,
    # so the chunking itself is held by the next test.
    data = write_dataset(tmp_path / "data", n_train=40, n_test=10, seed=3)
    local = _run(tiny_config(data={"workers": 2}), data, tmp_path / "local")
    dask_cfg = tiny_config(data={"engine": "dask", "dask_scheduler": cluster})
    on_dask = _run(dask_cfg, data, tmp_path / "dask")
    assert len(local) >= 8 and "ingest/index.csv" in local
    assert sorted(on_dask) == sorted(local)
    assert [k for k in local if on_dask[k] != local[k]] == []


def _square(path: Path) -> tuple[str, int]:
    return path.name, int(path.stem) ** 2


def test_order_comes_from_the_input_across_chunks(cluster, tmp_path):
    paths = [tmp_path / f"{k}.x" for k in reversed(range(700))]  # 3 chunks of up to 256
    got = map_files(_square, paths, Engine("dask", 0, cluster))
    assert got == [(p.name, int(p.stem) ** 2) for p in paths]


def test_a_scheduler_that_does_not_answer_is_one_line(tmp_path, capsys):
    cfg = tiny_config(data={"engine": "dask", "dask_scheduler": "tcp://127.0.0.1:9"})
    data = write_dataset(tmp_path / "data", n_train=4, n_test=2)
    params = write_params(tmp_path / "params.yaml", cfg)
    argv = ["ingest", "--params", str(params), "--data", str(data), "--out", str(tmp_path / "o")]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "imgclf ingest: data.dask_scheduler tcp://127.0.0.1:9: no Dask scheduler answered "
        "(OSError); start one (`dask scheduler`) or set data.engine=local"
    ]
    assert issubclass(EngineError, ImgclfError)
