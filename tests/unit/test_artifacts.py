"""imgclf.artifacts is the one owner of every stage output: dvc.yaml and the code agree with it.

Pure checks (files, ASTs and small round trips): no training, no MLflow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from imgclf import artifacts
from imgclf.artifacts import (
    ARTIFACTS_DIR,
    FORMAT_FILES,
    EvaluateOutputs,
    ExportOutputs,
    IngestOutputs,
    ModelFolder,
    Outputs,
    PreprocessOutputs,
    TrainOutputs,
)
from imgclf.predict import default_model_uri
from tests.conftest import REPO_ROOT, tiny_config, write_params

SRC = REPO_ROOT / "src"
STAGES: dict[str, type[Outputs]] = {
    c.STAGE: c
    for c in (IngestOutputs, PreprocessOutputs, TrainOutputs, EvaluateOutputs, ExportOutputs)
}
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
# Imported by stages but left out of dvc.yaml's deps on purpose (dvc.yaml's header says why).
NOT_DEPS = {"config.py", "errors.py", "interrupts.py", "lineage.py", "tracking"}
NOT_DEPS |= {"orphans.py", "pauses.py"}  # when a stage stops, never what it writes
NOT_DEPS |= {"host.py"}  # a run's CPU tag, through lineage.py
NOT_DEPS |= {"console.py"}  # what the console shows, never what a stage writes
# The registry version is what export makes; evaluate's metrics name the CPU.
NOT_DEPS_EXCEPT = {"export": {"tracking"}, "evaluate": {"host.py"}}


def _paths(entries: list) -> list[str]:
    """dvc.yaml list entries, plain or ``{path: {options}}``."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _split_artifact(path: str) -> tuple[str, str]:
    parts = Path(path).parts
    assert parts[0] == ARTIFACTS_DIR and len(parts) == 3, f"{path}: not artifacts/<stage>/<file>"
    return parts[1], parts[2]


def test_stages_are_the_artifact_classes_in_dvc_yaml_order():
    assert list(DVC["stages"]) == list(STAGES)


@pytest.mark.parametrize("stage", list(STAGES))
def test_dvc_outputs_are_exactly_the_classes_files(stage):
    spec, cls = DVC["stages"][stage], STAGES[stage]
    outs = _paths(spec.get("outs")) + _paths(spec.get("metrics"))
    assert sorted(outs) == sorted(f"{ARTIFACTS_DIR}/{stage}/{n}" for n in cls.names().values())
    assert f"--out {cls.in_project(Path()).root.as_posix()}" in spec["cmd"]


def test_every_artifact_path_in_dvc_yaml_is_a_known_output():
    used = [d for s in DVC["stages"].values() for d in _paths(s.get("deps"))]
    for plot in DVC["plots"]:
        used += [plot] if isinstance(plot, str) else list(next(iter(plot.values()))["y"])
    for path in (p for p in used if p.startswith(f"{ARTIFACTS_DIR}/")):
        stage, name = _split_artifact(path)
        assert name in STAGES[stage].names().values(), path


def _imgclf_imports(path: Path) -> set[str]:
    """Modules of imgclf that ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgclf"):
            found.add(node.module or "")
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imgclf")}
    return found


def _module_path(module: str) -> Path | None:
    base = SRC / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _closure(module: str) -> set[Path]:
    """Files of every imgclf module that importing ``module`` runs (its packages included)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [*_imgclf_imports(path), name.rpartition(".")[0]]
    return seen


def _dep(path: Path) -> str:
    """The dvc.yaml dep that covers ``path``: a package other than stages/ is its folder."""
    rel = path.relative_to(SRC / "imgclf")
    top = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] != "stages" else rel.as_posix()
    return f"src/imgclf/{top}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_code_deps_are_the_modules_the_stage_imports(stage):
    """A code change reruns exactly the stages whose outputs it can change."""
    skip = NOT_DEPS - NOT_DEPS_EXCEPT.get(stage, set())
    wanted = {_dep(p) for p in _closure(f"imgclf.stages.{stage}")}
    wanted -= {"src/imgclf/__init__.py", "src/imgclf/stages/__init__.py"}
    wanted -= {f"src/imgclf/{name}" for name in skip}
    code = {d for d in _paths(DVC["stages"][stage]["deps"]) if d.startswith("src/")}
    assert code == wanted


def test_no_stage_imports_another_stage():
    for path in (SRC / "imgclf" / "stages").glob("*.py"):
        others = {
            m for m in _imgclf_imports(path) if m.startswith("imgclf.stages") and path.stem not in m
        }
        assert not others, f"{path.name} imports {others}"


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_each_file_name_is_spelled_only_in_artifacts():
    """Other modules name outputs through imgclf.artifacts; a literal ``"dataset.npz"`` elsewhere
    is a second path to the same file, and drifts."""
    names = {n for c in (*STAGES.values(), ModelFolder) for n in c.names().values()}
    names |= {f for fmt, f in FORMAT_FILES.items() if f != fmt}  # saved_model: also a format
    # "formats" is also a version tag and a JSON key (registry.FORMATS_TAG, registered.json's)
    names.discard(ExportOutputs.formats.name)
    package = Path(artifacts.__file__).resolve().parent
    spelled_in: dict[str, list[str]] = {}
    for path in [*SRC.rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]:
        clash = names & _string_literals(path)
        if path.resolve().is_relative_to(package):
            for name in clash:
                spelled_in.setdefault(name, []).append(path.name)
        else:
            assert not clash, f"{path.relative_to(REPO_ROOT)} spells {sorted(clash)}"
    assert spelled_in.keys() == names, "every name is spelled in the package"
    twice = {n: where for n, where in spelled_in.items() if len(where) > 1}
    assert not twice, f"spelled in two of the package's modules: {twice}"


def test_folder_deps_hash_without_bytecode():
    """Python writes ``__pycache__`` into a package it imports (unless PYTHONDONTWRITEBYTECODE is
    set): were it hashed, a first import would mark the stage changed and rerun it."""
    from dvc.repo import Repo

    folders = {
        d
        for spec in DVC["stages"].values()
        for d in _paths(spec.get("deps"))
        if d.startswith("src/") and (REPO_ROOT / d).is_dir()
    }
    assert "src/imgclf/artifacts" in folders
    with Repo(str(REPO_ROOT)) as repo:
        for folder in sorted(folders):
            assert repo.dvcignore.is_ignored_dir(str(REPO_ROOT / folder / "__pycache__")), folder


def test_split_and_leak_flags_round_trip(tmp_path):
    pre = PreprocessOutputs(tmp_path)
    row = {"path": "a.png", "class": "x", "group": "0", "leak": "0"}
    pre.write_split({"train": [row], "val": [], "test": [row, {**row, "path": "b", "leak": "1"}]})
    assert pre.split.read_text().splitlines() == [
        "path,class,subset,group,leak",
        "a.png,x,train,0,0",
        "a.png,x,test,0,0",
        "b,x,test,0,1",
    ]
    assert [r["path"] for r in pre.read_split("test")] == ["a.png", "b"]
    assert pre.read_leak_flags(2).tolist() == [False, True]
    with pytest.raises(ValueError, match=re.escape(str(pre.split))):
        pre.read_leak_flags(3)


def test_history_keeps_four_columns_and_reads_back_what_was_logged(tmp_path):
    out = TrainOutputs(tmp_path)
    out.write_history({"loss": [0.5, 0.25], "accuracy": [0.75, 1.0]})  # a refit: no val_*
    assert out.history.read_text().splitlines() == [
        "epoch,loss,accuracy,val_loss,val_accuracy",
        "1,0.500000,0.750000,,",
        "2,0.250000,1.000000,,",
    ]
    assert out.read_history() == {"loss": [0.5, 0.25], "accuracy": [0.75, 1.0]}


def test_model_description_defaults_and_refuses_an_unknown_fit(tmp_path):
    folder = ModelFolder(tmp_path)
    assert folder.read_fit() == "stretch" and folder.read_manifest() is None
    folder.write_input_spec({"image_height": 4, "image_width": 6, "fit": "sideways"})
    with pytest.raises(ValueError, match=re.escape(str(folder.input_spec))):
        folder.read_fit()
    PreprocessOutputs(tmp_path).write_classes(["b", "a"])
    assert folder.read_classes() == ["b", "a"]  # the same file name in both folders


def test_predictions_csv_bytes(tmp_path):
    path = EvaluateOutputs(tmp_path).predictions
    artifacts.write_predictions(
        path, ["a", "b"], np.array([0, 1]), np.array([1, 1]), np.array([0.61234, 0.9])
    )
    assert path.read_bytes() == b"actual,predicted,probability\na,b,0.6123\nb,b,0.9000\n"


def test_default_model_uri_comes_from_the_projects_params(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path / "params.yaml", tiny_config(export={"champion_alias": "best"}))
    (tmp_path / "sub").mkdir()
    assert default_model_uri(tmp_path / "sub") == "models:/tiny-model@best"


def test_default_model_uri_outside_a_project_is_conf_s_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    conf = yaml.safe_load((REPO_ROOT / "conf" / "mlflow" / "default.yaml").read_text())
    alias = yaml.safe_load((REPO_ROOT / "conf" / "export" / "default.yaml").read_text())
    expected = f"models:/{conf['registered_model_name']}@{alias['champion_alias']}"
    assert default_model_uri(tmp_path) == expected
    assert list(tmp_path.iterdir()) == []
