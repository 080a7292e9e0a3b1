"""Writes a shard folder (:mod:`imgclf.artifacts.shards` describes the format).

Writing streams: :class:`ShardWriter` appends rows to the current shard file with plain writes
(one shard and one chunk in memory at most), into a temporary folder beside the target that
replaces it only once complete: a kill leaves the old folder or the new one, never half.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from imgclf.artifacts.shards import (
    FORMAT_VERSION,
    MANIFEST,
    RERUN,
    SUBSETS,
    ShardError,
    rows_per_shard,
)


class ShardWriter:
    """Append rows subset by subset; on a clean exit the folder replaces ``target`` at once.

    ``counts`` (rows per subset, known before decoding) fixes each shard's row count, so each
    shard's header is written once, before its rows. Rows must come in :data:`SUBSETS` order.
    """

    def __init__(
        self,
        target: Path,
        *,
        image_shape: Sequence[int],
        counts: Mapping[str, int],
        classes: Sequence[str],
        params: Mapping[str, Any],
        shard_rows: int = 0,
    ) -> None:
        self.target = Path(target)
        self.tmp = self.target.with_name(f".{self.target.name}.partial")
        self.image_shape = tuple(int(d) for d in image_shape)
        self.counts = {s: int(counts.get(s, 0)) for s in SUBSETS}
        self.classes = list(classes)
        self.params = dict(params)
        self.shard_rows = shard_rows or rows_per_shard(self.image_shape)
        self.row_bytes = math.prod(self.image_shape)
        self._subsets: dict[str, dict[str, Any]] = {}
        self._labels: dict[str, list[np.ndarray]] = {s: [] for s in SUBSETS}
        self._subset: str | None = None
        self._written = 0  # rows of the current subset so far
        self._file: Any = None
        self._hash: Any = None
        self._entry: dict[str, Any] | None = None

    def __enter__(self) -> ShardWriter:
        self._guard(self._start)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self._guard(self._finish)
        else:
            self._abort()

    def append(self, subset: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Write ``images`` (``k x H x W x 3`` uint8) and their ``labels`` as ``subset``'s next
        rows."""
        if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(f"rows of {images.shape[1:]} {images.dtype}, not {self.image_shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self._guard(self._append, subset, np.ascontiguousarray(images), labels)

    # The steps, each under _guard so any OSError becomes one line and no partial folder stays.

    def _guard(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except OSError as exc:
            self._abort()
            if exc.errno == errno.ENOSPC:
                need = sum(self.counts.values()) * self.row_bytes / 1e6
                raise ShardError(
                    f"{self.target}: the disk is full writing the shards (about {need:.0f} MB "
                    f"in all); free space there and {RERUN}"
                ) from exc
            raise ShardError(
                f"{self.target}: writing the shards failed ({exc.strerror or exc}); "
                f"check that folder and its disk, then {RERUN}"
            ) from exc
        except BaseException:
            self._abort()
            raise

    def _start(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # a killed run's leftovers
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()

    def _append(self, subset: str, images: np.ndarray, labels: np.ndarray) -> None:
        if subset != self._subset:
            self._end_subset()
            order = SUBSETS.index(subset)
            if subset in self._subsets or any(s in self._subsets for s in SUBSETS[order + 1 :]):
                raise ValueError(f"subset {subset} out of order: write them as {SUBSETS}")
            self._subset, self._written = subset, 0
            self._subsets[subset] = {"files": []}
        if self._written + len(images) > self.counts[subset]:
            raise ValueError(f"more {subset} rows than the {self.counts[subset]} announced")
        self._labels[subset].append(np.asarray(labels, dtype=np.int64))
        done = 0
        while done < len(images):
            if self._file is None:
                self._open_shard(subset)
            assert self._entry is not None
            room = self._entry["rows"] - self._entry["_filled"]
            part = images[done : done + room]
            data = part.tobytes()  # a copy of one chunk at most
            self._file.write(data)
            self._hash.update(data)
            self._entry["_filled"] += len(part)
            done += len(part)
            self._written += len(part)
            if self._entry["_filled"] == self._entry["rows"]:
                self._close_shard()

    def _open_shard(self, subset: str) -> None:
        index = len(self._subsets[subset]["files"])
        rows = min(self.shard_rows, self.counts[subset] - self._written)
        name = f"{subset}-{index:05d}.npy"
        header = io.BytesIO()
        npformat.write_array_header_1_0(
            header,
            {
                "descr": npformat.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": (rows, *self.image_shape),
            },
        )
        self._file = (self.tmp / name).open("wb")
        self._file.write(header.getvalue())
        self._hash = hashlib.sha256(header.getvalue())
        self._entry = {"file": name, "rows": rows, "_filled": 0}
        self._subsets[subset]["files"].append(self._entry)

    def _close_shard(self) -> None:
        assert self._entry is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._entry.pop("_filled")
        self._entry["bytes"] = (self.tmp / self._entry["file"]).stat().st_size
        self._entry["sha256"] = self._hash.hexdigest()
        self._file = self._entry = self._hash = None

    def _end_subset(self) -> None:
        if self._subset is not None and self._written != self.counts[self._subset]:
            raise ValueError(
                f"{self._written} {self._subset} rows written, {self.counts[self._subset]} "
                "announced"
            )

    def _finish(self) -> None:
        self._end_subset()
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "image_shape": list(self.image_shape),
            "dtype": "uint8",
            "classes": self.classes,
            "params": self.params,
            "rows_per_shard": self.shard_rows,
            "subsets": {},
        }
        for s in SUBSETS:
            if self.counts[s] and s not in self._subsets:
                raise ValueError(f"no {s} rows written, {self.counts[s]} announced")
            labels = np.concatenate([np.zeros(0, np.int64), *self._labels[s]])
            name = f"{s}-labels.npy"
            with (self.tmp / name).open("wb") as f:
                np.save(f, labels)
                f.flush()
                os.fsync(f.fileno())
            manifest["subsets"][s] = {
                "count": self.counts[s],
                "labels": _file_entry(self.tmp / name, len(labels)),
                "files": self._subsets.get(s, {"files": []})["files"],
            }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        with (self.tmp / MANIFEST).open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(self.tmp, self.target)

    def _abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def _file_entry(path: Path, rows: int) -> dict[str, Any]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # a labels file: 8 bytes a row
    return {"file": path.name, "rows": rows, "bytes": path.stat().st_size, "sha256": digest}


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Make the complete folder ``tmp`` the folder ``target``, replacing any old one at once.

    A new target is one ``rename``. An existing one is exchanged with ``tmp`` in one
    ``renameat2(RENAME_EXCHANGE)`` (Linux), then the old copy (now at ``tmp``) is removed; where
    that call is missing the old folder is moved aside first, a short window without a target.
    """
    if not target.exists():
        os.rename(tmp, target)
    elif not _exchange(tmp, target):
        aside = target.with_name(f".{target.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
        return
    shutil.rmtree(tmp, ignore_errors=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(rc == 0)


def write_subsets(
    target: Path,
    subsets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    classes: Sequence[str],
    params: Mapping[str, Any],
    shard_rows: int = 0,
) -> None:
    """Write in-memory ``{subset: (images, labels)}`` as a shard folder (small data, tests)."""
    shape = next(iter(subsets.values()))[0].shape[1:]
    counts = {s: len(subsets[s][1]) if s in subsets else 0 for s in SUBSETS}
    with ShardWriter(
        target,
        image_shape=shape,
        counts=counts,
        classes=classes,
        params=params,
        shard_rows=shard_rows,
    ) as writer:
        for s in SUBSETS:
            if s in subsets and len(subsets[s][1]):
                writer.append(s, subsets[s][0], subsets[s][1])
