"""The subcommands over trained models: predict, serve, promote, registry."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from imgclf.cli.command import Command, add_bind, add_model, add_params
from imgclf.errors import MissingInputError

log = logging.getLogger("imgclf")


def _predict_args(p: argparse.ArgumentParser) -> None:
    from imgclf.answers import OUTPUTS

    p.add_argument("paths", nargs="+", help="image files or folders")
    add_model(p)
    p.add_argument("--json", action="store_true", help="print JSON (same as --output json)")
    p.add_argument(
        "--output",
        choices=OUTPUTS,
        default="text",
        help="text (tab-separated, names escaped), json, jsonl (one object a line) or csv",
    )
    add_confidence(p)


def _predict(args: argparse.Namespace) -> int:
    from imgclf.answers import ConfidenceRule, write_results
    from imgclf.predict import collect_images, default_model_uri, load_model, predict_files

    files = collect_images(args.paths)
    if not files:
        raise MissingInputError(f"no image files in {' '.join(args.paths)}")
    loaded = load_model(args.model or default_model_uri(), args.format)
    rule = ConfidenceRule(args.min_probability, args.min_side)
    results = predict_files(loaded, files, rule=rule)
    sys.stdout.flush()
    write_results(results, "json" if args.json else args.output, sys.stdout.buffer, loaded.classes)
    sys.stdout.buffer.flush()
    failed = [r for r in results if r.error]
    if failed:
        print(f"{len(failed)} of {len(results)} files could not be read", file=sys.stderr)
        return 1
    return 0


def add_confidence(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-probability",
        type=float,
        default=None,
        help="answer 'uncertain' when the top probability is below this (default: a tenth "
        "of the way from chance to certainty, 0.40 for three classes)",
    )
    p.add_argument(
        "--min-side",
        type=int,
        default=None,
        help="answer 'uncertain' for images whose shorter side is below this many pixels "
        "(default: half the model's shorter input side)",
    )


def _serve_args(p: argparse.ArgumentParser) -> None:
    from imgclf.serving.config import MIB, ServeConfig

    d = ServeConfig()
    add_model(p)
    add_bind(p, port=d.port)
    add_confidence(p)
    for flag, default, kind, what in (
        ("--header-timeout", d.header_timeout_s, float, "seconds for the request line and headers"),
        ("--body-timeout", d.body_timeout_s, float, "seconds for the whole body (408 after)"),
        ("--max-body-mib", d.max_body_bytes / MIB, float, "largest request body (413 over)"),
        ("--max-pixels", None, int, "largest image, width x height, from its header"),
        ("--decode-memory-mib", d.decode_memory_bytes / MIB, float, "memory for decoding"),
        ("--body-memory-mib", d.body_memory_bytes / MIB, float, "memory for request bodies"),
        ("--decode-workers", d.decode_workers, int, "images decoded at once"),
        ("--max-connections", d.max_connections, int, "open connections (503 beyond)"),
        ("--poll", d.poll_s, float, "seconds between checks of the model alias (0: off)"),
    ):
        shown = "the loader's limit, as data.max_pixels" if default is None else f"{default:g}"
        p.add_argument(flag, type=kind, default=default, help=f"{what} (default {shown})")


def _serve(args: argparse.Namespace) -> int:
    from imgclf.predict import default_model_uri, load_model
    from imgclf.serving.app import Service
    from imgclf.serving.config import MIB, ServeConfig, token_from_env
    from imgclf.serving.holder import ModelHolder
    from imgclf.serving.server import serve

    spec = args.model or default_model_uri()
    holder = ModelHolder(spec, args.format, load_model(spec, args.format))
    cfg = ServeConfig(
        host=args.host,
        port=args.port,
        token=token_from_env(),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_body_bytes=int(args.max_body_mib * MIB),
        max_pixels=args.max_pixels,
        decode_memory_bytes=int(args.decode_memory_mib * MIB),
        body_memory_bytes=int(args.body_memory_mib * MIB),
        decode_workers=args.decode_workers,
        max_connections=args.max_connections,
        poll_s=args.poll,
        min_probability=args.min_probability,
        min_side=args.min_side,
    )
    return serve(Service(holder, cfg))


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
    from imgclf import promote, tracking
    from imgclf.errors import PromotionError
    from imgclf.lineage import data_hash
    from imgclf.params import load_config

    cfg = load_config(args.params)
    # The model first: in a clone with no registered model, that is what is missing.
    tracking.open_registry()
    name = cfg.mlflow.registered_model_name
    if args.version is not None:
        tracking.get_version(name, version=args.version)
    else:
        tracking.get_version(name, alias=cfg.export.challenger_alias)
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
    p.add_argument(
        "--card",
        metavar="VERSION",
        help="print that version's model card (markdown); VERSION may be @alias",
    )


def _registry(args: argparse.Namespace) -> int:
    from imgclf import registry, tracking
    from imgclf.params import load_config

    cfg = load_config(args.params)
    tracking.open_registry()  # where there is no store, says so (and creates none)
    name = args.name or cfg.mlflow.registered_model_name
    tracking.require_model(name)  # one line naming the models that exist
    if args.card:
        return _print_card(name, args.card)
    desc = registry.describe(name, cfg.export.champion_alias)
    print(json.dumps(desc, indent=2) if args.json else render_registry(desc))
    return 0 if desc["versions"] else 1


def _print_card(name: str, version: str) -> int:
    from imgclf import card, tracking

    if version.startswith("@"):  # --card @champion
        info = tracking.get_version(name, alias=version[1:])
    else:  # a missing version is one line naming the ones that exist
        info = tracking.get_version(name, version.removeprefix("v"))
    text = card.read(name, info.version)
    print(text or f"{name} v{info.version} has no model card (registered before cards existed)")
    return 0 if text else 1


COMMANDS = [
    Command("predict", "classify image files or folders", _predict_args, _predict),
    Command(
        "serve",
        "HTTP server classifying uploaded image files (127.0.0.1 by default; docs/serving.md)",
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


def render_registry(desc: dict[str, Any]) -> str:
    """``imgclf registry``'s text: a versions table, then the champion history."""
    from imgclf import registry

    lines = [f"Registered model {desc['name']}", ""]
    header = f"{'version':>7}  {'aliases':<22} {'acc':>6} {'leakfree':>8} {'data_md5':<10} formats"
    lines += [header, "-" * len(header)]
    for v in desc["versions"]:
        lines.append(
            f"{v['version']:>7}  {','.join(v['aliases']) or '-':<22} "
            f"{v['test_accuracy'] or '-':>6} {v['test_leakfree_accuracy'] or '-':>8} "
            f"{(v['data_md5'] or '-')[:10]:<10} {v[registry.FORMATS_TAG] or '-'}"
        )
        for fmt, why in v["invalid_formats"].items():
            lines.append(f"{'':>9}{fmt}: {why}")
    lines += ["", "@champion history (oldest first)"]
    if not desc["history"]:
        lines.append("  (no recorded move)")
    for m in desc["history"]:
        compared = ""
        cand, champ = m["metrics"].get("candidate"), m["metrics"].get("champion")
        if cand:
            metric = m["metrics"].get("metric", "leakfree_accuracy")
            compared = f"; {metric} {_fmt(cand.get(metric))}"
            if champ:
                compared += f" vs {_fmt(champ.get(metric))}"
        lines.append(
            f"  {m['at']}  {m['from_version'] or 'none'} -> {m['to_version']}"
            f"{'  FORCED' if m['forced'] else ''}  {m['reason']}{compared}"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"
