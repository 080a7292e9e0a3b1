"""The command table, the one base error class, and one-line messages for expected failures."""

import os
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
