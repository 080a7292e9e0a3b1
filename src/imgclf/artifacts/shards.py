"""The preprocess stage's decoded images as fixed-size shards: the format and the one reader.

A shard folder (``artifacts/preprocess/shards/``) holds, per subset (train, val, test):

- ``<subset>-NNNNN.npy``: uint8 image rows (``rows x H x W x 3``), about :data:`SHARD_BYTES`
  each, so the row count per shard follows from the image size;
- ``<subset>-labels.npy``: every row's class id (int64; 8 bytes an image, small at any n);

and ``manifest.json``: the format version, the image shape and dtype, the classes, the input
spec that made the rows (the params), and per subset its count and each file's name, row
count, size and sha256 (``files``).

Why ``.npy`` and not TFRecord or ArrayRecord: a row is at a fixed byte offset
(``header + row * row_bytes``), so any row is one positioned read: random access for the
shuffled training order and the cross-validation folds without an index or a sequential scan;
no new dependency; and numpy (or anything that reads the documented ``.npy`` header) opens a
shard anywhere, TensorFlow or not.

Reading is ``os.preadv`` into a batch buffer, not ``np.load(mmap_mode="r")``: pages of a
file-backed mapping that a process touches count in its resident set until the kernel reclaims
them, so an epoch over a memory-mapped dataset shows an RSS that grows towards the dataset's
size; positioned reads go through the page cache (the kernel's, freed under pressure) into one
batch-sized buffer, so the process's peak RSS stays flat at any n (scripts/bench_shards.py
measures both).

The writer is :mod:`imgclf.artifacts.shard_writer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from imgclf.artifacts.layout import MANIFEST_NAME
from imgclf.errors import ImgclfError, MissingInputError

FORMAT_VERSION = 1
SHARD_BYTES = 100 * 2**20  # about 100 MB a shard
SUBSETS = ("train", "val", "test")
MANIFEST = MANIFEST_NAME
RERUN = "rerun `dvc repro preprocess`"


class ShardError(ImgclfError, RuntimeError):
    """A shard folder cannot be written, or does not match its manifest."""


def rows_per_shard(image_shape: Sequence[int], shard_bytes: int = SHARD_BYTES) -> int:
    """How many rows of ``image_shape`` (uint8) make about ``shard_bytes``."""
    return max(1, shard_bytes // math.prod(image_shape))


# --- writing ----------------------------------------------------------------------------------


# --- reading ----------------------------------------------------------------------------------


class ShardReader:
    """A shard folder, checked against its manifest: each subset as :class:`Rows`.

    Opening reads the manifest and every file's ``.npy`` header and checks each file's size;
    :meth:`verify` also checks every file's sha256 (a full read). The rows of every subset are
    numbered in one global order (train, val, test), which is what :class:`Rows` indexes.

    Raises:
        MissingInputError: the folder or its manifest is missing.
        ShardError: a file is missing, has another size or shape than the manifest says, or the
            manifest is of another format version.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise MissingInputError(f"{manifest_path} not found: {RERUN}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ShardError(f"{manifest_path} is not valid JSON ({exc}); {RERUN}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ShardError(
                f"{manifest_path}: shard format {manifest.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; {RERUN}"
            )
        self.manifest: dict[str, Any] = manifest
        self.image_shape: tuple[int, ...] = tuple(manifest["image_shape"])
        self.classes: list[str] = list(manifest["classes"])
        self.params: dict[str, Any] = dict(manifest["params"])
        self.row_bytes = math.prod(self.image_shape)
        self._files: list[Path] = []
        self._offsets: list[int] = []  # each shard's header size
        starts = [0]
        self._subset_start: dict[str, int] = {}
        labels = []
        for s in SUBSETS:
            entry = manifest["subsets"][s]
            self._subset_start[s] = starts[-1]
            for shard in entry["files"]:
                path = self.root / shard["file"]
                self._check_size(path, shard)
                self._offsets.append(self._header(path, (shard["rows"], *self.image_shape)))
                self._files.append(path)
                starts.append(starts[-1] + shard["rows"])
            if starts[-1] - self._subset_start[s] != entry["count"]:
                raise ShardError(
                    f"{manifest_path}: {s}'s shards do not add up to its count; {RERUN}"
                )
            label_path = self.root / entry["labels"]["file"]
            self._check_size(label_path, entry["labels"])
            subset_labels = np.load(label_path)
            if subset_labels.shape != (entry["count"],):
                raise ShardError(f"{label_path} does not hold {entry['count']} labels; {RERUN}")
            labels.append(subset_labels.astype(np.int64))
        self._starts = np.array(starts, dtype=np.int64)
        self.labels = np.concatenate(labels)  # every row's class id, in the global order
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @property
    def counts(self) -> dict[str, int]:
        return {s: int(self.manifest["subsets"][s]["count"]) for s in SUBSETS}

    def subset(self, name: str) -> Rows:
        """Every row of subset ``name``, in order."""
        start = self._subset_start[name]
        return Rows(self, np.arange(start, start + self.counts[name], dtype=np.int64))

    def pool(self, names: Sequence[str]) -> Rows:
        """The rows of ``names``, one subset after the other."""
        return concat([self.subset(s) for s in names], self)

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (reads every byte once)."""
        for s in SUBSETS:
            entry = self.manifest["subsets"][s]
            for f in [*entry["files"], entry["labels"]]:
                digest = hashlib.sha256()
                with (self.root / f["file"]).open("rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                if digest.hexdigest() != f["sha256"]:
                    raise ShardError(
                        f"{self.root / f['file']}: sha256 differs from {MANIFEST}; {RERUN}"
                    )

    def read(self, ids: np.ndarray) -> np.ndarray:
        """The image rows of global row ids ``ids``, in that order, as one new array."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), *self.image_shape), dtype=np.uint8)
        if not len(ids):
            return out
        if ids.min() < 0 or ids.max() >= self._starts[-1]:
            raise IndexError(f"row ids outside 0..{self._starts[-1] - 1}")
        flat = out.reshape(len(ids), self.row_bytes)
        shard = np.searchsorted(self._starts, ids, side="right") - 1
        row = ids - self._starts[shard]
        # Runs of consecutive rows in one shard are one read (an ordered batch: usually one).
        cut = np.flatnonzero((np.diff(shard) != 0) | (np.diff(row) != 1)) + 1
        bounds = [0, *cut.tolist(), len(ids)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            s = int(shard[a])
            self._pread(s, flat[a:b], self._offsets[s] + int(row[a]) * self.row_bytes)
        return out

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into a sweep's child process: file descriptors do not travel, they reopen.
        state = dict(self.__dict__)
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid() and getattr(self, "_fds", None):
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _fd(self, shard: int) -> int:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's descriptors are not ours
                self._fds, self._pid = {}, os.getpid()
            fd = self._fds.get(shard)
            if fd is None:
                try:
                    fd = os.open(self._files[shard], os.O_RDONLY)
                except FileNotFoundError as exc:
                    raise ShardError(f"{self._files[shard]} is missing; {RERUN}") from exc
                self._fds[shard] = fd
            return fd

    def _pread(self, shard: int, buf: np.ndarray, offset: int) -> None:
        fd, view, done = self._fd(shard), memoryview(buf.data).cast("B"), 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise ShardError(f"{self._files[shard]} is shorter than its manifest says; {RERUN}")
            done += got

    def _check_size(self, path: Path, entry: Mapping[str, Any]) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ShardError(f"{path} is missing; {RERUN}") from exc
        if size != entry["bytes"]:
            raise ShardError(f"{path} is {size} bytes, its manifest says {entry['bytes']}; {RERUN}")

    def _header(self, path: Path, shape: tuple[int, ...]) -> int:
        with path.open("rb") as f:
            version = npformat.read_magic(f)
            read = (
                npformat.read_array_header_1_0
                if version == (1, 0)
                else npformat.read_array_header_2_0
            )
            got, fortran, dtype = read(f)
            if tuple(got) != shape or fortran or dtype != np.uint8:
                raise ShardError(f"{path} holds {got} {dtype}, its manifest says {shape}; {RERUN}")
            return f.tell()


class Rows:
    """A lazy selection of rows of a :class:`ShardReader`: labels in memory, images read on demand.

    Indexes like a read-only array for the few uses that want one (``len``, ``shape``,
    ``rows[i]``, ``rows[a:b]``, ``rows[index_array]`` read those images); :meth:`take` and
    :func:`concat` make new selections without reading any image.
    """

    def __init__(self, reader: ShardReader, ids: np.ndarray) -> None:
        self.reader = reader
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = reader.labels[self.ids]

    @property
    def n(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ids), *self.reader.image_shape)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.reader.image_shape

    def rows(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """The images at positions ``indices`` of this selection."""
        return self.reader.read(self.ids[np.asarray(indices, dtype=np.int64)])

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            return self.reader.read(self.ids[key])
        if np.ndim(key) == 0:
            return self.rows([int(key)])[0]  # type: ignore[arg-type]
        return self.rows(key)  # type: ignore[arg-type]

    def take(self, indices: np.ndarray | Sequence[int]) -> Rows:
        """The rows at positions ``indices`` of this selection, as a selection (no image read)."""
        return Rows(self.reader, self.ids[np.asarray(indices, dtype=np.int64)])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The images in order, ``batch_size`` at a time (the last batch may be shorter)."""
        for start in range(0, len(self.ids), batch_size):
            yield self.reader.read(self.ids[start : start + batch_size])


def concat(parts: Sequence[Rows], reader: ShardReader | None = None) -> Rows:
    """``parts`` one after the other (all of one reader)."""
    if not parts:
        if reader is None:
            raise ValueError("concat of nothing needs the reader")
        return Rows(reader, np.zeros(0, np.int64))
    return Rows(parts[0].reader, np.concatenate([p.ids for p in parts]))
