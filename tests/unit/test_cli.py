"""The command table, the one base error class, and one-line messages for expected failures."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf import cli
from imgclf.cli.command import Command
from imgclf.cli.pipeline import STAGE_INPUTS
from imgclf.errors import EXIT_USER_ERROR, ImgclfError
from tests.conftest import REPO_ROOT, tiny_config, write_params


def test_every_subcommand_is_one_row_of_the_table():
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == list(cli.COMMANDS)
    assert {"ingest", "preprocess", "train", "evaluate", "export"} <= set(cli.COMMANDS)
    for stage, inputs in STAGE_INPUTS.items():
        args = parser.parse_args([stage, *(f"--{flag}=x" for flag in inputs), "--out", "y"])
        assert (args.command, args.params, args.out) == (stage, "params.yaml", "y")


def test_every_expected_failure_subclasses_the_base_error():
    from imgclf.config import ConfigError
    from imgclf.dataset import DatasetError
    from imgclf.errors import ExportError, IngestError, MissingInputError, PromotionError
    from imgclf.predict import ModelLoadError
    from imgclf.predictors import IntegrityError
    from imgclf.resume import TrainingBusyError
    from imgclf.sweeps.settings import SweepConfigError

    for cls in (
        ConfigError,
        DatasetError,
        ExportError,
        IngestError,
        IntegrityError,
        MissingInputError,
        ModelLoadError,
        PromotionError,
        SweepConfigError,
        TrainingBusyError,
    ):
        assert issubclass(cls, ImgclfError), cls
    assert issubclass(MissingInputError, FileNotFoundError)  # `except FileNotFoundError` holds


def test_a_bad_params_key_is_one_line_naming_it_and_what_to_do(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", tiny_config())
    params.write_text(params.read_text(encoding="utf-8").replace("  patience:", "  patiense:"))
    argv = ["evaluate", "--params", str(params), "--preprocess", "p", "--train", "t", "--out", "o"]
    code = cli.main(argv)
    assert code == EXIT_USER_ERROR
    assert capsys.readouterr().err == (
        f"imgclf evaluate: {params}: unknown key 'train.patiense' (did you mean "
        "'train.patience'?); fix it in conf/ and run `make params`\n"
    )


def test_a_missing_input_is_one_line(tmp_path, capsys):
    absent = tmp_path / "nothing-here"
    assert cli.main(["predict", str(absent), "--model", str(tmp_path)]) == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"imgclf predict: {absent}: no such file or folder\n"


def test_only_expected_failures_are_caught(monkeypatch, capsys):
    """A bug keeps its traceback: the CLI catches the base class, nothing broader."""

    def expected(_args):
        raise ImgclfError("a.yaml: line one\nline two")

    def bug(_args):
        raise ZeroDivisionError("a bug")

    noop = cli.COMMANDS["doctor"].add_args
    monkeypatch.setitem(cli.COMMANDS, "doctor", Command("doctor", "", noop, expected))
    assert cli.main(["doctor"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "imgclf doctor: a.yaml: line one; line two\n"
    monkeypatch.setitem(cli.COMMANDS, "doctor", Command("doctor", "", noop, bug))
    with pytest.raises(ZeroDivisionError):
        cli.main(["doctor"])


@pytest.mark.integration  # real MLflow store, converters or processes
@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("train.epochs=abc", "bad value for 'train.epochs'"),
        ("+model.filterz=8", "unknown key 'model.filterz' (did you mean 'model.filters'?)"),
    ],
)
def test_imgclf_train_bad_override_is_one_line(tmp_path, override, line):
    exe = str(Path(sys.executable).with_name("imgclf-train"))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["IMGCLF_CONF_DIR"] = str(REPO_ROOT / "conf")
    proc = subprocess.run(
        [exe, override, f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR
    (err,) = proc.stderr.splitlines()
    assert err.startswith("imgclf-train: ") and line in err and "fix the override" in err


@pytest.mark.integration  # two real imgclf-train processes
def test_jobs_started_side_by_side_get_their_own_hydra_folders(tmp_path):
    """Two jobs started in one second (seeds side by side, as docs/sweeps.md suggests) must not
    share Hydra's run folder: one's .hydra/config.yaml and app.log would land in the other's."""
    exe = str(Path(sys.executable).with_name("imgclf-train"))
    env = {**os.environ, "IMGCLF_CONF_DIR": str(REPO_ROOT / "conf")}
    procs = [
        subprocess.Popen([exe, "--cfg", "hydra", "--resolve"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    dirs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        (run_dir,) = re.findall(r"^\s+dir: (outputs/\S+)$", out, re.MULTILINE)
        dirs.append(run_dir)
        assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", run_dir)
    assert dirs[0] != dirs[1]


def test_running_out_of_memory_is_one_line_and_leaves_no_half_written_shards(
    tmp_path, capsys, monkeypatch
):
    from imgclf.stages import ingest, preprocess
    from tests.conftest import write_dataset

    data = write_dataset(tmp_path / "data", n_train=4, n_test=2)
    cfg = tiny_config()
    ingest.run(cfg, in_dir=data, out_dir=tmp_path / "ingest", track=False)
    params = write_params(tmp_path / "params.yaml", cfg)
    calls = []

    def fails_on_the_third_image(*args, **kwargs):  # a memory cap hit part-way through
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError
        return real(*args, **kwargs)

    real = preprocess.load_resized
    monkeypatch.setattr(preprocess, "load_resized", fails_on_the_third_image)
    out = tmp_path / "pre"
    argv = ["preprocess", "--params", str(params), "--data", str(data)]
    code = cli.main([*argv, "--ingest", str(tmp_path / "ingest"), "--out", str(out)])
    assert code == cli.EXIT_OUT_OF_MEMORY != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "imgclf preprocess: out of memory (MemoryError): lower data.workers or train.batch_size, "
        "or give the process more memory; nothing was left half-written"
    ]
    assert len(calls) == 3
    # No shard folder, finished or temporary (".shards.partial"): `dvc repro` starts clean.
    assert [p.name for p in out.iterdir()] == []
