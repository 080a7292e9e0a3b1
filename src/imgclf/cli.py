"""The ``imgclf`` command: one subcommand per DVC stage, plus ``predict``, ``validate``,
``promote``, ``registry`` and ``serve``.

Stage subcommands are the doors of :mod:`imgclf.stages`: they load and validate ``params.yaml``,
set up logging, call the stage's ``run`` and turn expected failures into a one-line message and
a non-zero exit. The stages themselves never read argv or params.yaml.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgclf import interrupts

log = logging.getLogger("imgclf")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _setup(verbose: bool = False) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # Download progress bars would interleave with promote's table and predict's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stage(name: str, args: argparse.Namespace) -> None:
    from imgclf.config import load_config

    cfg = load_config(args.params)
    started = time.perf_counter()
    if name == "ingest":
        from imgclf.stages import ingest

        ingest.run(cfg, in_dir=Path(args.data), out_dir=Path(args.out))
    elif name == "preprocess":
        from imgclf.stages import preprocess

        preprocess.run(
            cfg, data_dir=Path(args.data), ingest_dir=Path(args.ingest), out_dir=Path(args.out)
        )
    elif name == "train":
        from imgclf.stages import train

        train.run(cfg, in_dir=Path(args.preprocess), out_dir=Path(args.out))
    elif name == "evaluate":
        from imgclf.stages import evaluate

        evaluate.run(
            cfg,
            preprocess_dir=Path(args.preprocess),
            train_dir=Path(args.train),
            out_dir=Path(args.out),
        )
    elif name == "export":
        from imgclf.stages import export

        export.run(
            cfg,
            preprocess_dir=Path(args.preprocess),
            train_dir=Path(args.train),
            evaluate_dir=Path(args.evaluate),
            out_dir=Path(args.out),
        )
    log.info("%s: done in %.1f s", name, time.perf_counter() - started)


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


def _ui(args: argparse.Namespace) -> int:
    import shutil

    from imgclf import tracking

    cmd = tracking.ui_command(args.host, args.port)
    exe = shutil.which(cmd[0]) or str(Path(sys.executable).with_name(cmd[0]))
    log.info("MLflow UI on http://%s:%d over %s", args.host, args.port, cmd[7])
    sys.stdout.flush()
    os.execv(exe, [exe, *cmd[1:]])
    return 0  # not reached


def _doctor(args: argparse.Namespace) -> int:
    from imgclf.dvclock import diagnose
    from imgclf.lineage import project_root

    ok, lines = diagnose(Path(args.root) if args.root else project_root(), fix=args.fix)
    for line in lines:
        print(line)
    return 0 if ok else 1


def _predict(args: argparse.Namespace) -> int:
    from imgclf.predict import collect_images, load_model, predict_files

    files = collect_images(args.paths)
    if not files:
        raise FileNotFoundError(f"no files found in {' '.join(args.paths)}")
    loaded = load_model(args.model, args.format)
    results = predict_files(loaded, files)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                print(f"{r.path}\tERROR\t{r.error}")
            else:
                print(f"{r.path}\t{r.label}\t{r.probability:.4f}")
    failed = [r for r in results if r.error]
    if failed:
        print(f"{len(failed)} of {len(results)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    from imgclf.compose import compose_config
    from imgclf.config import load_config
    from imgclf.dataset import detect_splits
    from imgclf.validate import render_text, validate_dataset

    # Without params.yaml (any folder, outside the project) conf/'s composition applies.
    params = Path(args.params or "params.yaml")
    cfg = load_config(params) if args.params or params.is_file() else compose_config()
    root = Path(args.dataset)
    v = validate_dataset(root, cfg.data, detect_splits(root, cfg.data.train_dir, cfg.data.test_dir))
    if args.json:
        print(json.dumps({**v.report, "leakage": v.duplicates}, indent=2, default=str))
    else:
        print(render_text(v))
    for problem in v.problems:
        log.error("not usable: %s", problem)
    return 0 if v.usable else 1


def _promote(args: argparse.Namespace) -> int:
    from imgclf import promote
    from imgclf.config import load_config
    from imgclf.lineage import data_hash

    cfg = load_config(args.params)
    pinned = data_hash(Path(args.data_dvc))
    stale = promote.stale_test_data(Path.cwd())
    if stale is not None:
        raise promote.PromotionError(
            f"the test set in {args.preprocess} is not the one {args.data_dvc} pins ({stale}): "
            "run `dvc checkout` / `dvc repro preprocess` first"
        )
    result = promote.run(
        cfg,
        preprocess_dir=Path(args.preprocess),
        data_md5=pinned,
        data_dir=Path(args.data),
        version=args.version,
        force=args.force,
        reason=args.reason or "",
    )
    print(promote.render(result, cfg))
    return 0 if result.accepted else 1


def _registry(args: argparse.Namespace) -> int:
    from imgclf import registry, tracking
    from imgclf.config import load_config

    cfg = load_config(args.params)
    tracking.configure()
    desc = registry.describe(
        args.name or cfg.mlflow.registered_model_name, cfg.export.champion_alias
    )
    print(json.dumps(desc, indent=2) if args.json else registry.render(desc))
    return 0 if desc["versions"] else 1


def _serve(args: argparse.Namespace) -> int:
    from imgclf.predict import load_model
    from imgclf.serve import ServeConfig, serve, token_from_env

    loaded = load_model(args.model, args.format)
    serve(loaded, ServeConfig(host=args.host, port=args.port, token=token_from_env()))
    return 0


STAGE_ARGS: dict[str, tuple[str, ...]] = {
    "ingest": ("data",),
    "preprocess": ("data", "ingest"),
    "train": ("preprocess",),
    "evaluate": ("preprocess", "train"),
    "export": ("preprocess", "train", "evaluate"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    from imgclf.config import FORMAT_NAMES

    parser = argparse.ArgumentParser(prog="imgclf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, inputs in STAGE_ARGS.items():
        p = sub.add_parser(stage, help=f"run the {stage} stage (as dvc.yaml does)")
        p.add_argument("--params", default="params.yaml", help="composed params file")
        for name in inputs:
            p.add_argument(f"--{name}", required=True, help=f"{name} folder")
        p.add_argument("--out", required=True, help="output folder")
    p = sub.add_parser("params", help="compose conf/ (Hydra) into params.yaml, as dvc exp run does")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optimizer=sgd")
    p.add_argument("--conf", default="conf", help="Hydra config folder")
    p.add_argument("--out", default="params.yaml")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the file differs from the composition instead of writing",
    )
    p = sub.add_parser("ui", help="MLflow UI over the project's store (127.0.0.1 by default)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but loopback needs auth in front (README)",
    )
    p.add_argument("--port", type=int, default=5000)
    p = sub.add_parser(
        "validate",
        help="check a folder-per-class dataset: rejects, duplicates, "
        "train/test leakage (trains nothing)",
    )
    p.add_argument(
        "dataset",
        help="dataset folder: Training_data/ + Testing_Data/ inside, or "
        "one folder of class folders",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--params",
        default=None,
        help="params file for the limits (default: ./params.yaml if present)",
    )
    p = sub.add_parser(
        "doctor",
        help="after a killed `dvc repro`: find stale DVC locks and "
        "say how to recover (make repro runs it when dvc repro fails)",
    )
    p.add_argument(
        "--fix",
        action="store_true",
        help="remove a stale .dvc/tmp/rwlock (never one a live DVC process holds)",
    )
    p.add_argument("--root", default=None, help="project folder (default: this project)")
    p = sub.add_parser("predict", help="classify image files or folders")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument(
        "--model",
        default=None,
        help="model URI (default models:/idcards@champion), an export folder, or "
        "an exported file (.h5 .keras .tflite .onnx, SavedModel folder)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        default=None,
        help="which exported file to use (default: onnx, else h5, for a URI or export "
        "folder; the file's own format for a file); all give the same answers",
    )
    p = sub.add_parser(
        "promote",
        help="move @champion to a candidate version, behind the gate "
        "(floors + margin over the champion, same test set)",
    )
    p.add_argument("--params", default="params.yaml", help="composed params file")
    p.add_argument("--version", default=None, help="candidate version (default: @challenger)")
    p.add_argument("--force", action="store_true", help="override a refusal (needs --reason)")
    p.add_argument("--reason", default=None, help="why; recorded on the version")
    p.add_argument(
        "--preprocess",
        default="artifacts/preprocess",
        help="folder with the test tensors (dataset.npz, split.csv, classes.json)",
    )
    p.add_argument("--data-dvc", default="data.dvc", help="the .dvc file pinning the data")
    p.add_argument(
        "--data",
        default="data/id-cards",
        help="the dataset folder split.csv's paths are relative to: a version trained on "
        "another input size or data.fit is measured on these files prepared its way",
    )
    p = sub.add_parser("registry", help="list versions, aliases, metrics and @champion history")
    p.add_argument("--params", default="params.yaml", help="composed params file")
    p.add_argument("--name", default=None, help="registered model (default: from params)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser(
        "serve", help="HTTP server classifying uploaded image files (127.0.0.1 by default)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="model URI (default models:/idcards@champion), export folder or file",
    )
    p.add_argument("--format", choices=FORMAT_NAMES, default=None, help="exported file to use")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but loopback needs auth in front (README)",
    )
    p.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgclf`` console script."""
    args = build_parser().parse_args(argv)
    _setup(args.verbose)
    from imgclf.config import ConfigError
    from imgclf.dataset import DatasetError
    from imgclf.errors import ExportError, IngestError, PromotionError
    from imgclf.predict import DEFAULT_MODEL_URI, ModelLoadError
    from imgclf.resume import TrainingBusyError

    expected: tuple[type[BaseException], ...] = (
        ConfigError,
        DatasetError,
        IngestError,
        ModelLoadError,
        FileNotFoundError,
        TrainingBusyError,
        PromotionError,
        ExportError,
    )
    handler: Callable[[], Any]
    if args.command == "ui":
        handler = lambda: _ui(args)  # noqa: E731
    elif args.command == "params":
        handler = lambda: _params(args)  # noqa: E731
    elif args.command == "validate":
        handler = lambda: _validate(args)  # noqa: E731
    elif args.command == "doctor":
        handler = lambda: _doctor(args)  # noqa: E731
    elif args.command == "predict":
        args.model = args.model or DEFAULT_MODEL_URI
        handler = lambda: _predict(args)  # noqa: E731
    elif args.command == "serve":
        args.model = args.model or DEFAULT_MODEL_URI
        handler = lambda: _serve(args)  # noqa: E731
    elif args.command == "promote":
        handler = lambda: _promote(args)  # noqa: E731
    elif args.command == "registry":
        handler = lambda: _registry(args)  # noqa: E731
    else:
        handler = lambda: _stage(args.command, args)  # noqa: E731
    try:
        with interrupts.handlers():
            return int(handler() or 0)
    except expected as exc:
        log.error("%s", exc)
        return EXIT_USER_ERROR
    except interrupts.Terminated:
        log.error("terminated (SIGTERM)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
