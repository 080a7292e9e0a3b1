"""A synthetic folder-per-class dataset of card-like JPEGs, at any size, with planted leakage.

For benchmarks and tests at real-world scale (10k to 1M files) without real data: the images
are :mod:`imgclf.data.cards`' (a look per class, varied per image). Leakage is planted where
ingest must find it: ``exact_fraction`` of the files are byte copies of training files placed in
the test split, ``near_fraction`` are near copies (the training file re-encoded at another JPEG
quality, or shifted in brightness), all within dHash distance 3 of their source.

Each file is a pure function of ``(seed, index)`` (its own seeded generator), so a process pool
writes the same bytes in any order and with any number of workers.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.cards import IMAGE_KEY, PLAN_KEY, QUALITY, draw_image, encode, rng_for
from imgclf.errors import ImgclfError
from imgclf.parallel import map_in_processes

TRAIN_DIR, TEST_DIR = "Training_data", "Testing_Data"  # conf/data/idcards.yaml's names
MANIFEST = "synth.json"  # beside the split folders: ingest reads only those


class SynthError(ImgclfError, ValueError):
    """The requested dataset cannot be written (bad counts, or the folder is not empty)."""


@dataclass
class SynthSummary:
    """What :func:`write_synthetic` wrote. Paths are relative to ``root``."""

    root: Path
    n: int
    seed: int
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> files
    exact: list[tuple[str, str]] = field(default_factory=list)  # (copy, training source)
    near: list[tuple[str, str, str]] = field(default_factory=list)  # (copy, source, variant)
    bytes_written: int = 0
    seconds: float = 0.0

    def manifest(self) -> dict[str, Any]:
        """The JSON written to ``root/synth.json`` (everything but the timing)."""
        return {
            "n": self.n,
            "seed": self.seed,
            "classes": self.classes,
            "counts": self.counts,
            "exact": [list(p) for p in self.exact],
            "near": [list(p) for p in self.near],
            "bytes": self.bytes_written,
        }


@dataclass(frozen=True)
class PlannedFile:
    """One file of :func:`plan`: an original (``source`` None) or a copy of training file
    ``source``."""

    index: int
    rel: str
    cls: int
    source: int | None = None
    source_rel: str = ""
    variant: str = ""  # "exact", "quality" or "brightness" for a copy


def class_names(classes: int) -> list[str]:
    """``class_0`` ... (zero-padded, so sorted names keep the class order)."""
    width = len(str(classes - 1))
    return [f"class_{k:0{width}d}" for k in range(classes)]


def _write_original(f: PlannedFile, *, seed: int, classes: int, root: str) -> int:
    img, quality = draw_image(seed, f.index, f.cls, classes)
    data = encode(img, quality)
    Path(root, f.rel).write_bytes(data)
    return len(data)


def _write_copy(f: PlannedFile, *, seed: int, root: str) -> int:
    data = Path(root, f.source_rel).read_bytes()
    if f.variant != "exact":
        rng = rng_for(seed, IMAGE_KEY, f.index)
        with Image.open(BytesIO(data)) as src:
            img = src.convert("RGB")
        if f.variant == "quality":
            data = encode(img, int(rng.integers(55, 71)))
        else:
            shift = int(rng.integers(4, 11)) * int(rng.choice([-1, 1]))
            lut = [min(255, max(0, v + shift)) for v in range(256)] * 3
            data = encode(img.point(lut), int(rng.integers(QUALITY[0], QUALITY[1] + 1)))
    Path(root, f.rel).write_bytes(data)
    return len(data)


def plan(
    n: int,
    *,
    classes: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    exact_fraction: float = 0.02,
    near_fraction: float = 0.02,
) -> list[PlannedFile]:
    """Every file of the dataset, in index order: which split and class, which are copies.

    Classes take turns (file ``i`` is class ``i % classes``), so every split is balanced to one
    file. The test split ends with the copies, each of a distinct training file of its class.
    """
    n_test = round(n * test_fraction)
    n_exact, n_near = round(n * exact_fraction), round(n * near_fraction)
    n_train = n - n_test
    if classes < 2 or n_train < classes or n_test < classes:
        raise SynthError(
            f"{n} images, test_fraction {test_fraction}: need at least {classes} files "
            "in each split and 2 classes"
        )
    if n_exact + n_near > n_test - classes:
        raise SynthError(
            f"{n_exact} exact + {n_near} near copies do not fit in a test split of {n_test} "
            f"that keeps an original of each of the {classes} classes"
        )
    names = class_names(classes)
    width = len(str(n - 1))

    def rel(i: int, split: str) -> str:
        return f"{split}/{names[i % classes]}/{names[i % classes]}_{i:0{width}d}.jpg"

    files = [PlannedFile(i, rel(i, TRAIN_DIR), i % classes) for i in range(n_train)]
    first_copy = n - n_exact - n_near
    files += [PlannedFile(i, rel(i, TEST_DIR), i % classes) for i in range(n_train, first_copy)]
    rng = rng_for(seed, PLAN_KEY, 0)
    # Distinct sources per class, in a seeded order; a class short of training files wraps.
    pools = [rng.permutation(np.arange(k, n_train, classes)) for k in range(classes)]
    taken = [0] * classes
    for j, i in enumerate(range(first_copy, n)):
        k = i % classes
        src = int(pools[k][taken[k] % len(pools[k])])
        taken[k] += 1
        variant = "exact" if j < n_exact else ("quality", "brightness")[int(rng.integers(0, 2))]
        files.append(PlannedFile(i, rel(i, TEST_DIR), k, src, rel(src, TRAIN_DIR), variant))
    return files


def write_synthetic(
    root: Path | str,
    n: int,
    *,
    classes: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    exact_fraction: float = 0.02,
    near_fraction: float = 0.02,
    workers: int = 0,
) -> SynthSummary:
    """Write ``n`` card-like JPEGs under ``root/Training_data/<class>/`` and ``root/Testing_Data/``.

    The folder is built under a temporary name beside ``root`` and renamed into place when
    complete, so an interrupted run leaves no half dataset. ``root/synth.json`` lists the
    planted copies.

    Args:
        n: files in all, copies included.
        test_fraction: share of the files in Testing_Data (the copies are among them).
        exact_fraction: share of the files that are byte copies of training files, in the test
            split; ``near_fraction``: the same for near copies.
        workers: writing processes (0: every core); the bytes do not depend on it.

    Raises:
        SynthError: impossible counts, or ``root`` exists and is not empty.
    """
    started = time.perf_counter()
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SynthError(f"{root}: exists and is not an empty folder; give a new one")
    if root.resolve() == Path.cwd().resolve():  # it is replaced by a rename: not the cwd
        raise SynthError(f"{root}: the current folder; give a new one")
    files = plan(
        n,
        classes=classes,
        seed=seed,
        test_fraction=test_fraction,
        exact_fraction=exact_fraction,
        near_fraction=near_fraction,
    )
    names = class_names(classes)
    tmp = root.resolve().with_name(f".{root.resolve().name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in (TRAIN_DIR, TEST_DIR):
        for name in names:
            (tmp / split / name).mkdir(parents=True)
    try:
        originals = [f for f in files if f.source is None]
        copies = [f for f in files if f.source is not None]
        written = map_in_processes(
            functools.partial(_write_original, seed=seed, classes=classes, root=str(tmp)),
            originals,
            workers,
        )
        written += map_in_processes(
            functools.partial(_write_copy, seed=seed, root=str(tmp)), copies, workers
        )
        counts = {s: dict.fromkeys(names, 0) for s in (TRAIN_DIR, TEST_DIR)}
        for f in files:
            counts[f.rel.split("/", 1)[0]][names[f.cls]] += 1
        summary = SynthSummary(
            root=root,
            n=n,
            seed=seed,
            classes=names,
            counts=counts,
            exact=[(f.rel, f.source_rel) for f in copies if f.variant == "exact"],
            near=[(f.rel, f.source_rel, f.variant) for f in copies if f.variant != "exact"],
            bytes_written=sum(written),
        )
        (tmp / MANIFEST).write_text(json.dumps(summary.manifest(), indent=1), encoding="utf-8")
        if root.exists():
            root.rmdir()  # empty (checked above); renaming onto a folder is not portable
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    return summary
