"""The subcommands over trained models and datasets: validate, predict, serve, promote, registry."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from imgclf.cli.command import Command, add_bind, add_model, add_params
from imgclf.errors import MissingInputError

log = logging.getLogger("imgclf")


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        help="dataset folder: Training_data/ + Testing_Data/ inside, or one folder of "
        "class folders",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    # No default: ./params.yaml if there is one, else conf/ composed (outside a project too).
    add_params(p, default=None)


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


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="image files or folders")
    add_model(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _predict(args: argparse.Namespace) -> int:
    from imgclf.predict import collect_images, default_model_uri, load_model, predict_files

    files = collect_images(args.paths)
    if not files:
        raise MissingInputError(f"no image files in {' '.join(args.paths)}")
    loaded = load_model(args.model or default_model_uri(), args.format)
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


def _serve_args(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_bind(p, port=8080)


def _serve(args: argparse.Namespace) -> int:
    from imgclf.predict import default_model_uri, load_model
    from imgclf.serve import ServeConfig, serve, token_from_env

    loaded = load_model(args.model or default_model_uri(), args.format)
    serve(loaded, ServeConfig(host=args.host, port=args.port, token=token_from_env()))
    return 0


def _promote_args(p: argparse.ArgumentParser) -> None:
    add_params(p)
    p.add_argument("--version", default=None, help="candidate version (default: @challenger)")
    p.add_argument("--force", action="store_true", help="override a refusal (needs --reason)")
    p.add_argument("--reason", default=None, help="why; recorded on the version")
    p.add_argument(
        "--preprocess",
        default="artifacts/preprocess",
        help="folder with the test tensors (the preprocess stage's output)",
    )
    p.add_argument("--data-dvc", default="data.dvc", help="the .dvc file pinning the data")
    p.add_argument(
        "--data",
        default="data/id-cards",
        help="the dataset folder split.csv's paths are relative to: a version trained on "
        "another input size or data.fit is measured on these files prepared its way",
    )


def _promote(args: argparse.Namespace) -> int:
    from imgclf import promote
    from imgclf.config import load_config
    from imgclf.errors import PromotionError
    from imgclf.lineage import data_hash

    cfg = load_config(args.params)
    pinned = data_hash(Path(args.data_dvc))
    stale = promote.stale_test_data(Path.cwd())
    if stale is not None:
        raise PromotionError(
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


def _registry_args(p: argparse.ArgumentParser) -> None:
    add_params(p)
    p.add_argument("--name", default=None, help="registered model (default: from params)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _registry(args: argparse.Namespace) -> int:
    from imgclf import registry, tracking
    from imgclf.config import load_config

    cfg = load_config(args.params)
    tracking.configure()
    name = args.name or cfg.mlflow.registered_model_name
    desc = registry.describe(name, cfg.export.champion_alias)
    print(json.dumps(desc, indent=2) if args.json else registry.render(desc))
    return 0 if desc["versions"] else 1


COMMANDS = [
    Command(
        "validate",
        "check a folder-per-class dataset: rejects, duplicates, train/test leakage "
        "(trains nothing)",
        _validate_args,
        _validate,
    ),
    Command("predict", "classify image files or folders", _predict_args, _predict),
    Command(
        "serve",
        "HTTP server classifying uploaded image files (127.0.0.1 by default)",
        _serve_args,
        _serve,
    ),
    Command(
        "promote",
        "move @champion to a candidate version, behind the gate "
        "(floors + margin over the champion, same test set)",
        _promote_args,
        _promote,
    ),
    Command(
        "registry",
        "list versions, aliases, metrics and @champion history",
        _registry_args,
        _registry,
    ),
]
