"""The preprocess stage's decoded images as fixed-size shards, their writer and the one reader.

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
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
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
