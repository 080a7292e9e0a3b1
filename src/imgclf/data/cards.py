"""One synthetic card-like image: a class's layout, varied per image, from a seeded generator.

What :mod:`imgclf.data.synth` writes, one file each. Each class has its own look (header band
colour and height, photo box corner, pattern of text-like lines, a barcode strip or not); each
image varies it (300-900 px wide, mostly landscape at the ID-1 card aspect with some portrait
pages, element jitter, JPEG quality, grain), so a CNN can learn the classes.

Every image also carries a smooth shading field whose 9x8 cells differ from their neighbours by
several grey levels, so its dHash bits are set by real gradients, not by rounding in flat areas:
a re-encoded or brightness-shifted copy stays within a Hamming distance of 3 of it (750 near
copies measured: all within 2), while unrelated files land far apart (19,900 pairs of 200
files of two classes: median 27 bits, closest 10).
"""

from __future__ import annotations

import colorsys
import functools
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

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
CLASS_KEY, IMAGE_KEY, PLAN_KEY = 0, 1, 2


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """The generator of one purpose and item (``IMAGE_KEY, index``: one file's draws)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@functools.cache
def _layout(seed: int, cls: int, classes: int) -> dict[str, Any]:
    """The class's look: fixed for a seed, so every image of the class shares it."""
    rng = rng_for(seed, CLASS_KEY, cls)
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
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(255 * r), int(255 * g), int(255 * b)


@functools.cache
def _noise_tile(seed: int) -> Image.Image:
    """Grain, 0 to GRAIN grey levels: drawn once per process and seed, windowed per image."""
    rng = rng_for(seed, PLAN_KEY, 1)
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
    rng = rng_for(seed, IMAGE_KEY, index)
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


def encode(img: Image.Image, quality: int) -> bytes:
    buf = BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
