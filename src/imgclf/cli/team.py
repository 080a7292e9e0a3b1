"""``imgclf team up|down``: the local team stack (PostgreSQL + MLflow server) for shared sweeps."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.cli.command import Command


def _team_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down"), help="start or stop the stack")
    p.add_argument(
        "--dir",
        default=None,
        help="the stack's folder: data, logs, env.sh (default: <project>/mlruns/team)",
    )
    p.add_argument("--port", type=int, default=5000, help="MLflow server port on 127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL port on 127.0.0.1")


def _team(args: argparse.Namespace) -> int:
    from imgclf.lineage import project_root
    from imgclf.sweeps import team

    folder = Path(args.dir) if args.dir else project_root() / "mlruns" / "team"
    if args.action == "down":
        print("team stack stopped" if team.down(folder) else f"no team stack up in {folder}")
        return 0
    stack = team.up(folder, port=args.port, pg_port=args.pg_port)
    print(f"team stack up in {folder}: MLflow {stack.tracking_uri}, PostgreSQL :{stack.pg_port}")
    print(f"each worker: source {folder / 'env.sh'}  (or export these)")
    for key, value in stack.env().items():
        print(f"export {key}={value}")
    return 0


COMMANDS = (
    Command(
        "team",
        "start (up) or stop (down) a local PostgreSQL + MLflow server for shared sweeps",
        _team_args,
        _team,
    ),
)
