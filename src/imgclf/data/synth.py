"""A synthetic folder-per-class dataset of card-like JPEGs, at any size, with planted leakage.

For benchmarks and tests at real-world scale (10k to 1M files) without real data. Each class has
its own layout (header band colour and height, photo box corner, pattern of text-like lines, a
barcode strip or not); each image varies it (size 300-900 px wide, mostly landscape at the ID-1
card aspect with some portrait pages, element jitter, JPEG quality, noise), so a CNN can learn
the classes and different files are not near twins of each other.

Leakage is planted where ingest must find it: ``exact_fraction`` of the files are byte copies of
training files placed in the test split, ``near_fraction`` are near copies (the training file
re-encoded at another JPEG quality, or shifted in brightness). Every image carries a smooth
shading field whose 9x8 cells differ from their neighbours by several grey levels, so its dHash
bits are set by real gradients, not by rounding in flat areas: a near copy stays within a
Hamming distance of 3 of its source, and unrelated files land about 32 bits apart.

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
from PIL import Image, ImageChops, ImageDraw

from imgclf.errors import ImgclfError
from imgclf.parallel import map_in_processes

TRAIN_DIR, TEST_DIR = "Training_data", "Testing_Data"  # conf/data/idcards.yaml's names
MANIFEST = "synth.json"  # beside the split folders: ingest reads only those
MIN_WIDTH, MAX_WIDTH = 300, 900
CARD_ASPECT = 85.6 / 54.0  # ID-1 (credit card) width / height
PAGE_ASPECT = 1 / 2**0.5  # A4 portrait width / height
PORTRAIT_FRACTION = 0.15
QUALITY = (80, 95)  # an original's JPEG quality, inclusive
HASH_COLS, HASH_ROWS = 9, 8  # imgclf.leakage.dhash's thumbnail
NOISE_TILE = 1536  # side of the noise texture each image takes a window of (> any image side)
SHADE, GRAIN = 56, 12  # most grey levels the shading field and the grain take off a pixel
DARKEST = SHADE + GRAIN  # every colour is drawn at least this bright (see _lift)

# SeedSequence spawn keys: one stream per purpose, so no two draws share one.
_CLASS, _IMAGE, _PLAN = 0, 1, 2


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
class _File:
    """One file to write: an original (``source`` None) or a copy of training file ``source``."""

    index: int
    rel: str
    cls: int
    source: int | None = None
    source_rel: str = ""
    variant: str = ""  # "exact", "quality" or "brightness" for a copy


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def class_names(classes: int) -> list[str]:
    """``class_0`` ... (zero-padded, so sorted names keep the class order)."""
    width = len(str(classes - 1))
    return [f"class_{k:0{width}d}" for k in range(classes)]


@functools.cache
def _layout(seed: int, cls: int, classes: int) -> dict[str, Any]:
    """The class's look: fixed for a seed, so every image of the class shares it."""
    rng = _rng(seed, _CLASS, cls)
    hue = (cls / classes + rng.uniform(-0.2, 0.2) / classes) % 1.0
    header = _hsv_to_rgb(hue, rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.8))
    return {
        "header": header,
        "header_h": rng.uniform(0.12, 0.28),  # fraction of the height
        "photo_right": bool(cls % 2),
        "photo_low": bool((cls // 2) % 2),
        "photo_w": rng.uniform(0.22, 0.32),
        "lines": int(rng.integers(3, 9)),
        "line_gap": rng.uniform(0.06, 0.11),
        "line_thick": rng.uniform(0.018, 0.035),
        "ink": tuple(int(v) for v in rng.integers(10, 90, 3)),
        "paper": tuple(int(v) for v in rng.integers(215, 250, 3)),
        "barcode": bool((cls // 4) % 2) or cls % 3 == 2,
    }


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(255 * r), int(255 * g), int(255 * b)


@functools.cache
def _noise_tile(seed: int) -> Image.Image:
    """Grain, 0 to GRAIN grey levels: drawn once per process and seed, windowed per image."""
    rng = _rng(seed, _PLAN, 1)
    tile = rng.integers(0, GRAIN + 1, (NOISE_TILE, NOISE_TILE), dtype=np.uint8)
    return Image.fromarray(tile, "L")


def _shading(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth darkening field (L, 0 to SHADE) whose 9x8 cells step by 8-20 levels sideways.

    Drawn on the dHash grid and upscaled, so each hash bit compares two cell means that differ
    by several grey levels: re-encoding or a small brightness shift cannot flip it. Each step's
    sign is random unless it would leave [0, SHADE] (never both ways: SHADE >= 2 x 20).
    """
    steps = rng.uniform(8, 20, (HASH_ROWS, HASH_COLS - 1)).tolist()  # plain floats: 10x faster
    signs = (rng.random((HASH_ROWS, HASH_COLS - 1)) < 0.5).tolist()
    starts = rng.uniform(0, SHADE, HASH_ROWS).tolist()
    rows = []
    for v, row_steps, row_signs in zip(starts, steps, signs, strict=True):
        row = [v]
        for s, up in zip(row_steps, row_signs, strict=True):
            if not (v - s >= 0 and v + s <= SHADE):
                up = v + s <= SHADE
            v = v + s if up else v - s
            row.append(v)
        rows.append(row)
    cells = np.rint(rows).astype(np.uint8)
    # Bilinear to a quarter of the size, then blocks of 4 px: a third of the cost of bilinear
    # all the way, and the grain on top hides the blocks.
    quarter = (max(1, width // 4), max(1, height // 4))
    smooth = Image.fromarray(cells, "L").resize(quarter, Image.Resampling.BILINEAR)
    return smooth.resize((width, height), Image.Resampling.NEAREST)


def _lift(rgb: Any) -> tuple[int, int, int]:
    """A colour moved into [DARKEST, 255], so darkening by shading and grain never wraps."""
    r, g, b = (DARKEST + min(255, max(0, int(c))) * (255 - DARKEST) // 255 for c in rgb)
    return r, g, b


def draw_image(seed: int, index: int, cls: int, classes: int) -> tuple[Image.Image, int]:
    """The RGB image of file ``index`` and the JPEG quality to save it at."""
    rng = _rng(seed, _IMAGE, index)
    lay = _layout(seed, cls, classes)
    width = int(rng.integers(MIN_WIDTH, MAX_WIDTH + 1))
    if rng.random() < PORTRAIT_FRACTION:
        height = int(width / (PAGE_ASPECT * rng.uniform(0.95, 1.05)))
    else:
        height = int(width / (CARD_ASPECT * rng.uniform(0.95, 1.05)))
    jitter = rng.uniform(-0.03, 0.03, 8)

    img = Image.new("RGB", (width, height), _lift(np.add(lay["paper"], rng.integers(-12, 13, 3))))
    d = ImageDraw.Draw(img)
    head = int(height * (lay["header_h"] + jitter[0]))
    d.rectangle((0, 0, width, head), fill=_lift(np.add(lay["header"], rng.integers(-20, 21, 3))))
    # A title in the header: a light bar of random length.
    tx, ty = int(width * (0.05 + jitter[1])), int(head * 0.35)
    d.rectangle(
        (tx, ty, tx + int(width * rng.uniform(0.25, 0.6)), ty + max(2, head // 4)),
        fill=_lift((240, 240, 240)),
    )

    # The photo box: a mid-grey face-like block with a darker oval.
    pw = int(width * (lay["photo_w"] + jitter[2]))
    ph = int(pw * 1.25)
    margin = int(width * 0.05)
    px = width - margin - pw if lay["photo_right"] else margin
    body_top, body_bottom = head + margin, height - margin
    py = body_bottom - ph if lay["photo_low"] else body_top
    py = int(np.clip(py + jitter[3] * height, head + 2, max(head + 2, height - ph - 2)))
    tone = int(rng.integers(90, 190))
    d.rectangle((px, py, px + pw, py + ph), fill=_lift((tone, tone - 10, tone - 25)))
    d.ellipse(
        (px + pw // 4, py + ph // 6, px + 3 * pw // 4, py + 3 * ph // 5),
        fill=_lift((tone - 50, tone - 60, tone - 70)),
    )

    # Text-like lines in the column beside the photo: words are runs of bars with gaps.
    col0 = margin if lay["photo_right"] else px + pw + margin
    col1 = px - margin if lay["photo_right"] else width - margin
    thick = max(2, int(height * lay["line_thick"]))
    ink = _lift(lay["ink"])
    y = body_top + int(height * jitter[4])
    # Random numbers drawn in blocks and walked as lists: one generator call per block instead of
    # two per word or bar (a third of the drawing time, when drawn one by one).
    ends = rng.uniform(0.4, 1.0, lay["lines"]).tolist()
    words = (width * rng.uniform(0.03, 0.12, 512)).astype(int).tolist()
    gaps = (width * rng.uniform(0.01, 0.025, 512)).astype(int).tolist()
    k = 0
    for line_end in ends:
        x = col0
        end = col0 + int((col1 - col0) * line_end)
        while x < end and k < len(words):
            d.rectangle((x, y, min(x + words[k], end), y + thick), fill=ink)
            x += words[k] + gaps[k]
            k += 1
        y += int(height * lay["line_gap"]) + thick
        if y > body_bottom:
            break
    if lay["barcode"]:
        bx, by = margin, height - margin - int(height * 0.1)
        bar_h, black = int(height * 0.08), _lift((0, 0, 0))
        for w, gap in rng.integers(1, 5, (512, 2)).tolist():
            if bx >= width * 0.6:
                break
            d.rectangle((bx, by, bx + w, by + bar_h), fill=black)
            bx += w + gap

    # Grain and shading darken the whole card (header included), both in C via ImageChops.
    tile = _noise_tile(seed)
    ox = int(rng.integers(0, NOISE_TILE - width + 1))
    oy = int(rng.integers(0, NOISE_TILE - height + 1))
    grain = tile.crop((ox, oy, ox + width, oy + height))
    # The *_modulo operations are 20x faster than the clipping ones and exact here: every
    # colour is at least DARKEST (_lift) and the darkening at most SHADE + GRAIN.
    dark = ImageChops.add_modulo(_shading(rng, width, height), grain)
    img = ImageChops.subtract_modulo(img, Image.merge("RGB", (dark, dark, dark)))
    return img, int(rng.integers(QUALITY[0], QUALITY[1] + 1))


def _encode(img: Image.Image, quality: int) -> bytes:
    buf = BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_original(f: _File, *, seed: int, classes: int, root: str) -> int:
    img, quality = draw_image(seed, f.index, f.cls, classes)
    data = _encode(img, quality)
    Path(root, f.rel).write_bytes(data)
    return len(data)


def _write_copy(f: _File, *, seed: int, root: str) -> int:
    data = Path(root, f.source_rel).read_bytes()
    if f.variant != "exact":
        rng = _rng(seed, _IMAGE, f.index)
        with Image.open(BytesIO(data)) as src:
            img = src.convert("RGB")
        if f.variant == "quality":
            data = _encode(img, int(rng.integers(55, 71)))
        else:
            shift = int(rng.integers(4, 11)) * int(rng.choice([-1, 1]))
            lut = [min(255, max(0, v + shift)) for v in range(256)] * 3
            data = _encode(img.point(lut), int(rng.integers(QUALITY[0], QUALITY[1] + 1)))
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
) -> list[_File]:
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

    files = [_File(i, rel(i, TRAIN_DIR), i % classes) for i in range(n_train)]
    first_copy = n - n_exact - n_near
    files += [_File(i, rel(i, TEST_DIR), i % classes) for i in range(n_train, first_copy)]
    rng = _rng(seed, _PLAN, 0)
    # Distinct sources per class, in a seeded order; a class short of training files wraps.
    pools = [rng.permutation(np.arange(k, n_train, classes)) for k in range(classes)]
    taken = [0] * classes
    for j, i in enumerate(range(first_copy, n)):
        k = i % classes
        src = int(pools[k][taken[k] % len(pools[k])])
        taken[k] += 1
        variant = "exact" if j < n_exact else ("quality", "brightness")[int(rng.integers(0, 2))]
        files.append(_File(i, rel(i, TEST_DIR), k, src, rel(src, TRAIN_DIR), variant))
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
    files = plan(
        n,
        classes=classes,
        seed=seed,
        test_fraction=test_fraction,
        exact_fraction=exact_fraction,
        near_fraction=near_fraction,
    )
    names = class_names(classes)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
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
            root.rmdir()  # empty, checked above: os.replace cannot rename onto a folder
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.seconds = time.perf_counter() - started
    return summary
