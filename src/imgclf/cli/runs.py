"""The subcommands over tracked runs: ``imgclf cv-report``."""

from __future__ import annotations

import argparse
import json

from imgclf.cli.command import Command


def _cv_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="+",
        help="cross-validated jobs of one recipe under different train.seed: their MLflow run "
        "ids, or their cv/predictions.csv files (or the cv/ folders holding them)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the bootstrap's seed (default: the first run's cv.seed, as the job drew it; 42 "
        "for files)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _cv_report(args: argparse.Namespace) -> int:
    from imgclf.sweeps import cvreport

    report = cvreport.run(args.sources, args.seed)
    if args.json:
        print(json.dumps(cvreport.as_json(report), indent=2))
    else:
        print(cvreport.render(report))
    return 0


COMMANDS = (
    Command(
        "cv-report",
        "score cross-validated runs of one recipe under other seeds as one repeated CV: mean, "
        "interval over files and seeds, files every seed gets wrong, the seeds' ensemble",
        _cv_report_args,
        _cv_report,
    ),
)
