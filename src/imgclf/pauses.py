"""Named points where a test can hold a real process, to kill it exactly there.

Tests of crash safety kill ``dvc repro`` and its stage at precise moments (while formats are
being written, right after a version is registered). Sleeping and hoping is flaky; instead the
test sets ``IMGCLF_PAUSE_AT=<point>`` and ``IMGCLF_PAUSE_DIR=<folder>``: on reaching that point
the process writes ``<folder>/<point>.pid`` and waits until ``<folder>/<point>.go`` exists (or
it is killed). Without the variables :func:`pause` does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "IMGCLF_PAUSE_AT"
PAUSE_DIR = "IMGCLF_PAUSE_DIR"


def pause(point: str) -> None:
    """Hold here if a test asked to (see the module docstring)."""
    if os.environ.get(PAUSE_AT) != point or not os.environ.get(PAUSE_DIR):
        return
    folder = Path(os.environ[PAUSE_DIR])
    (folder / f"{point}.pid").write_text(str(os.getpid()))
    while not (folder / f"{point}.go").exists():
        time.sleep(0.05)
