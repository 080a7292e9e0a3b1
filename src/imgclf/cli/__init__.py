"""imgclf: one subcommand per DVC stage, plus the tools over the same core.

The subcommands are a table (:data:`COMMANDS`): each :class:`~imgclf.cli.command.Command` has a
name, a help line, the arguments it adds and a handler. :func:`main` parses argv, runs the handler
under the signal handlers of :mod:`imgclf.interrupts`, and turns an expected failure (any
:class:`~imgclf.errors.ImgclfError`) into one line, ``imgclf <command>: <message>``, and exit
status 2. Anything else is a bug and keeps its traceback. Stages never read argv or params.yaml.
"""

from __future__ import annotations

import argparse
import sys

from imgclf import interrupts
from imgclf.cli import datasets, models, pipeline, runs, team
from imgclf.cli.command import Command, setup_logging
from imgclf.errors import EXIT_USER_ERROR, ImgclfError
from imgclf.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED

EXIT_OUT_OF_MEMORY = 1  # a process over its memory limit (MemoryError)

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        *pipeline.COMMANDS,
        *datasets.COMMANDS,
        *models.COMMANDS,
        *runs.COMMANDS,
        *team.COMMANDS,
    )
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subparser per entry of :data:`COMMANDS` (for tests and docs)."""
    parser = argparse.ArgumentParser(prog="imgclf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_args(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imgclf`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    command = COMMANDS[args.command]
    try:
        with interrupts.handlers():
            return int(command.run(args) or 0)
    except ImgclfError as exc:
        print(f"imgclf {command.name}: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except MemoryError:
        # At scale, a process over its memory limit (ulimit -v, a container's cap) gets here;
        # every stage output is written under a temporary name, so nothing half-written stays.
        print(
            f"imgclf {command.name}: out of memory (MemoryError): lower data.workers or "
            "train.batch_size, or give the process more memory; nothing was left half-written",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (interrupts.Terminated)
        status, what = interrupts.exit_status(exc)
        print(f"imgclf {command.name}: {what}", file=sys.stderr, flush=True)
        return status


def one_line(exc: BaseException) -> str:
    """The message on one line: a multi-line one (a library's, wrapped) joined with '; '."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


__all__ = [
    "COMMANDS",
    "EXIT_INTERRUPTED",
    "EXIT_OUT_OF_MEMORY",
    "EXIT_TERMINATED",
    "EXIT_USER_ERROR",
    "main",
]
