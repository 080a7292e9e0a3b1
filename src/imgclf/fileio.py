"""Atomic file writes: a killed stage leaves either the previous complete file or none."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success.

    The temporary name keeps the target's suffix, so writers that dispatch on it (Keras,
    matplotlib, numpy) behave as for the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would leak into the final file
    try:
        yield tmp
        if tmp.is_dir():
            raise IsADirectoryError(tmp)
        fsync(tmp)  # the bytes reach the disk before the name does (power loss, not just kill)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: Path | str, text: str) -> None:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path | str, obj: Any) -> None:
    """Write JSON atomically (sorted keys, stable diffs)."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(target: Path | str, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV atomically with Unix line ends (the same bytes on every OS, for DVC)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(target, buf.getvalue())


def read_json(path: Path | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def reset_dir(path: Path | str) -> Path:
    """Create ``path`` empty. Stage output folders are owned wholly by their stage."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
