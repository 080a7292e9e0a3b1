"""Decoded images cached by content, so a grown dataset decodes only its new files.

DVC reruns preprocess from scratch when anything it reads changes, one new file included; the
decode (JPEG draft decode, aspect fit, area resize) is most of that stage's time. The cache keys
each decoded input tensor by the sha256 of the file's bytes and a key of everything else that
shapes it: the input spec (``data.image_height``, ``data.image_width``, ``data.fit``) and the
bytes of the decoding code (:mod:`imgclf.images`). A renamed or moved file is a hit, an edited
one a miss, a changed size or decoder a fresh folder: no entry can be stale, so the cache is not
a DVC output, and deleting it (``rm -r .imgclf-cache``) only costs time.

Layout: ``<data.cache_dir>/decode/<key>/<sha[:2]>/<sha>.npy``, one small ``.npy`` per file
(18 KB at 64x96), each written to a temporary name and renamed into place, so processes and
Dask workers sharing the folder never read half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DecodeCache:
    """One cache folder: decoded tensors of one input spec and decoder, by file content."""

    folder: Path

    @classmethod
    def at(cls, cache_dir: str | Path, spec: Mapping[str, Any], code: bytes) -> DecodeCache | None:
        """The folder for ``spec`` decoded by ``code`` under ``cache_dir``; None if that is ""."""
        if not str(cache_dir):
            return None
        blob = json.dumps(dict(spec), sort_keys=True).encode() + b"\0" + code
        key = hashlib.sha256(blob).hexdigest()[:16]
        return cls(Path(cache_dir).resolve() / "decode" / key)

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        """The tensor decoded from content ``digest``, or None (absent or unreadable)."""
        try:
            return np.load(self._path(digest), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def put(self, digest: str, tensor: np.ndarray) -> None:
        """Store ``tensor`` for ``digest``; a failure to write (full disk) only loses the entry."""
        target = self._path(digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, np.ascontiguousarray(tensor), allow_pickle=False)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            return
