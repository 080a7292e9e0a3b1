"""The subcommands over datasets: validate one, write a synthetic one."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imgclf.cli.command import Command, add_params

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
    from imgclf.dataset import detect_splits
    from imgclf.params import load_config
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


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="new (or empty) folder to write the dataset in")
    p.add_argument("--n", type=int, required=True, help="images in all, planted copies included")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--workers", type=int, default=0, help="writing processes (0: every core)")


def _synth(args: argparse.Namespace) -> int:
    from imgclf.data.synth import write_synthetic

    s = write_synthetic(
        Path(args.out), args.n, classes=args.classes, seed=args.seed, workers=args.workers
    )
    train, test = (sum(c.values()) for c in s.counts.values())
    print(
        f"{s.root}: {s.n} JPEGs ({train} train, {test} test, {len(s.classes)} classes; "
        f"{len(s.exact)} exact and {len(s.near)} near copies of training files in the test split, "
        f"listed in synth.json), {s.bytes_written / 1e6:.0f} MB in {s.seconds:.1f} s "
        f"({s.n / s.seconds:.0f} images/s)"
    )
    return 0


COMMANDS = [
    Command(
        "validate",
        "check a folder-per-class dataset: rejects, duplicates, train/test leakage "
        "(trains nothing)",
        _validate_args,
        _validate,
    ),
    Command(
        "synth",
        "write a synthetic card-like dataset (Training_data/ + Testing_Data/) with planted "
        "exact and near copies, for benchmarks at any size",
        _synth_args,
        _synth,
    ),
]
