"""The pipeline's subcommands: one per DVC stage (as dvc.yaml runs them), params, doctor, ui."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.cli.command import Command, add_bind, add_params
from imgclf.errors import ImgclfError, MissingInputError

if TYPE_CHECKING:  # imported by name below; listed so the import graph (lint-imports) has them
    from imgclf.stages import evaluate, export, ingest, preprocess, train  # noqa: F401

log = logging.getLogger("imgclf")

# Each stage's input folders: its command-line flag -> the keyword of the stage's `run`.
STAGE_INPUTS: dict[str, dict[str, str]] = {
    "ingest": {"data": "in_dir"},
    "preprocess": {"data": "data_dir", "ingest": "ingest_dir"},
    "train": {"preprocess": "in_dir"},
    "evaluate": {"preprocess": "preprocess_dir", "train": "train_dir"},
    "export": {"preprocess": "preprocess_dir", "train": "train_dir", "evaluate": "evaluate_dir"},
}


def _stage_args(inputs: dict[str, str], p: argparse.ArgumentParser) -> None:
    add_params(p)
    for flag in inputs:
        p.add_argument(f"--{flag}", required=True, help=f"{flag} folder")
    p.add_argument("--out", required=True, help="output folder")


def _run_stage(name: str, args: argparse.Namespace) -> int:
    """The stage's door: validate params.yaml, then call ``imgclf.stages.<name>.run``."""
    from imgclf.params import load_config

    cfg = load_config(args.params)
    stage = importlib.import_module(f"imgclf.stages.{name}")  # only this one: all five cost ~3 s
    folders = {kw: Path(getattr(args, flag)) for flag, kw in STAGE_INPUTS[name].items()}
    started = time.perf_counter()
    from imgclf.orphans import watching

    with watching():  # a stage whose `dvc repro` is killed stops instead of going on as an orphan
        stage.run(cfg, out_dir=Path(args.out), **folders)
    log.info("%s: done in %.1f s", name, time.perf_counter() - started)
    return 0


def _params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optimizer=sgd")
    p.add_argument("--conf", default="conf", help="Hydra config folder")
    p.add_argument("--out", default="params.yaml")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the file differs from the composition instead of writing",
    )


def _params(args: argparse.Namespace) -> int:
    from imgclf.compose import compose_params, write_params

    conf, out = Path(args.conf), Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != compose_params(conf, args.overrides):
            log.error("%s is out of date with %s: run `make params` and commit it", out, conf)
            return 1
        log.info("%s matches %s", out, conf)
        return 0
    changed = write_params(conf, out, args.overrides)
    log.info("%s %s", out, "written" if changed else "already up to date")
    return 0


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fix",
        action="store_true",
        help="remove a stale .dvc/tmp/rwlock (never one a live DVC process holds)",
    )
    p.add_argument("--root", default=None, help="project folder (default: this project)")


def _doctor(args: argparse.Namespace) -> int:
    from imgclf.dvclock import diagnose
    from imgclf.lineage import project_root

    ok, lines = diagnose(Path(args.root) if args.root else project_root(), fix=args.fix)
    for line in lines:
        print(line)
    return 0 if ok else 1


def _ui_args(p: argparse.ArgumentParser) -> None:
    add_bind(p, port=5000)
    add_params(p)
    p.add_argument("--no-browser", action="store_true", help="print the URL only, open no browser")


def _ui(args: argparse.Namespace) -> int:
    """Serve the store with ``mlflow ui``; print (and open) the training view's URL once it answers.

    The view is the experiment's classic runs table (not MLflow 3's GenAI view) with the metrics
    that decide a comparison as columns (:func:`imgclf.tracking.store.training_view`).
    """
    import subprocess
    import urllib.request

    from imgclf import tracking
    from imgclf.tracking.store import training_view

    cmd = tracking.ui_command(args.host, args.port)
    exe = shutil.which(cmd[0]) or str(Path(sys.executable).with_name(cmd[0]))
    base = f"http://{args.host}:{args.port}/"
    url = base
    with contextlib.suppress(ImgclfError):
        from imgclf.params import load_config

        path = training_view(load_config(args.params).mlflow.experiment_name)
        url = base + path if path else base
    # mlflow's own start-up warnings (Flask/huey/security notes) go to a log file, not the console.
    log_path = tracking.store_dir() / "ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # MLflow 3 also starts a dozen job workers (GenAI judges, prompt optimisation; ~270 MB
    # each) that this project never uses.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    with log_path.open("ab") as server_log:
        proc = subprocess.Popen(
            [exe, *cmd[1:]], stdout=server_log, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        if proc.poll() is not None:
            log.error("mlflow ui exited with %s; see %s", proc.returncode, log_path)
            return 1
        print(f"MLflow UI (training runs): {url}", flush=True)
        print(f"Registered models: {base}#/models   (Ctrl-C stops the server)", flush=True)
        if not args.no_browser and _has_display():
            import webbrowser

            webbrowser.open(url)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def _has_display() -> bool:
    """Whether a graphical browser can open (never a text browser inside this terminal)."""
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _summary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=".", help="project folder (default: here)")


def _summary(args: argparse.Namespace) -> int:
    """Print the last repro's headline metrics (what `make repro` ends with)."""
    import json

    from imgclf.artifacts import EvaluateOutputs, TrainOutputs
    from imgclf.card import summary_table
    from imgclf.host import other_host_note

    root = Path(args.root)
    evaluated, trained = EvaluateOutputs.in_project(root), TrainOutputs.in_project(root)
    if not evaluated.metrics.is_file() or not trained.summary.is_file():
        raise MissingInputError(f"{evaluated.metrics} or {trained.summary}: run `dvc repro` first")
    summary = json.loads(trained.summary.read_text(encoding="utf-8"))
    metrics = evaluated.read_metrics()
    print(summary_table(metrics, summary))
    note = other_host_note(_committed_json(evaluated.metrics), metrics, _json(root / BENCHMARKS))
    if note:
        print(f"\n{note}")
    return 0


BENCHMARKS = "benchmarks.json"


def _json(path: Path) -> dict | None:
    """A JSON object file's content; ``None`` when it is missing or not a JSON object."""
    from imgclf.fileio import read_json

    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _committed_json(path: Path) -> dict:
    """``path`` as committed at HEAD (what the repository claims); ``{}`` when not in git."""
    import json

    from imgclf.lineage import committed_text

    text = committed_text(path)
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


COMMANDS = [
    *(
        Command(
            name,
            f"run the {name} stage (as dvc.yaml does)",
            functools.partial(_stage_args, inputs),
            functools.partial(_run_stage, name),
        )
        for name, inputs in STAGE_INPUTS.items()
    ),
    Command(
        "params",
        "compose conf/ (Hydra) into params.yaml, as dvc exp run does",
        _params_args,
        _params,
    ),
    Command(
        "ui",
        "MLflow UI over the project's store (127.0.0.1); prints and opens the training runs view",
        _ui_args,
        _ui,
    ),
    Command(
        "summary",
        "the last repro's headline metrics as a short table (make repro ends with it)",
        _summary_args,
        _summary,
    ),
    Command(
        "doctor",
        "after a killed `dvc repro`: find stale DVC locks and say how to recover "
        "(make repro runs it when dvc repro fails)",
        _doctor_args,
        _doctor,
    ),
]
