"""One row of the ``imgclf`` command table, and what every subcommand shares."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_args`` fills its parser, ``run`` returns the exit status (None = 0).

    ``run`` imports what it needs itself, so ``imgclf predict`` never pays for TensorFlow or
    MLflow that another subcommand uses.
    """

    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def add_params(p: argparse.ArgumentParser, default: str | None = "params.yaml") -> None:
    p.add_argument("--params", default=default, help="composed params file (`make params`)")


def add_model(p: argparse.ArgumentParser) -> None:
    from imgclf.config import FORMAT_NAMES

    p.add_argument(
        "--model",
        default=None,
        help="model URI (default: this project's models:/<registered_model_name>@champion), an "
        "export folder, or an exported file (.h5 .keras .tflite .onnx, SavedModel folder)",
    )
    p.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        default=None,
        help="which exported file to use (default: onnx, else h5, for a URI or export "
        "folder; the file's own format for a file); all give the same answers",
    )


def add_bind(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but loopback needs auth in front (README)",
    )
    p.add_argument("--port", type=int, default=port)


def setup_logging(verbose: bool = False) -> None:
    """Log lines with a time stamp; third-party chatter only from WARNING (all of it with -v or
    ``IMGCLF_VERBOSE=1``: :mod:`imgclf.console`)."""
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
    from imgclf.console import quiet_startup

    quiet_startup(force_verbose=verbose)  # after: it raises some of those levels further
