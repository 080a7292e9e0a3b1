"""The decoding path makes the same tensors as before it was split into probe and decode.

:func:`reference` is the loader as it was at 2f07eb4 (decode to RGB, rotate a copy, crop, resize),
kept here verbatim in substance: preprocess, predict and serve must keep giving the model the
very bytes it was trained on, whatever speed or memory work goes into :mod:`imgclf.images`.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from imgclf import images
from imgclf.images import fit_aspect, load_resized, open_image, resize
from tests.conftest import REPO_ROOT, write_dataset

FITS = ("stretch", "crop_tall", "crop")


def reference(path: Path, height: int, width: int, fit: str) -> np.ndarray:
    """The 2f07eb4 loader: RGB first, then crop and resize three channels."""
    img = Image.open(io.BytesIO(path.read_bytes()))
    if img.format == "JPEG":
        img.draft("RGB", (width * 2, height * 2))
    img.load()
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        if img.mode in ("RGBA", "LA", "PA"):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return resize(fit_aspect(rgb, height, width, fit), height, width)


def assert_same(files: list[Path], sizes=((32, 48), (64, 96))) -> None:
    for f in files:
        for height, width in sizes:
            for fit in FITS:
                got = load_resized(f, height, width, fit)
                want = reference(f, height, width, fit)
                assert got.shape == want.shape == (height, width, 3), f
                assert got.dtype == np.uint8 and np.array_equal(got, want), (f, fit, height)


def test_tiny_dataset_tensors_are_unchanged(tmp_path):
    data = write_dataset(tmp_path / "tiny", n_train=4, n_test=2)
    files = sorted(data.rglob("*.png"))
    assert len(files) == 18
    assert_same(files)


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def test_every_mode_and_rotation_gives_the_reference_tensor(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)
    grey = cv2.GaussianBlur(rng.integers(0, 255, (311, 173), dtype=np.uint8), (5, 5), 0)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees on display
    files = [
        _save(Image.fromarray(grey, "L"), tmp_path / "grey.png", "PNG"),
        _save(Image.fromarray(grey, "L"), tmp_path / "grey.jpg", "JPEG", quality=90),
        _save(Image.fromarray(rgb), tmp_path / "rgb.jpg", "JPEG", quality=85),
        _save(rotated, tmp_path / "rotated.jpg", "JPEG", exif=exif.tobytes()),
        _save(Image.fromarray(grey, "L").convert("LA"), tmp_path / "la.png", "PNG"),
        _save(Image.fromarray(rgb).convert("RGBA"), tmp_path / "rgba.png", "PNG"),
        _save(Image.fromarray(rgb).quantize(64), tmp_path / "palette.png", "PNG"),
        _save(Image.fromarray(grey.astype(np.uint16) * 200), tmp_path / "deep.png", "PNG"),
    ]
    assert_same(files)
    # Greyscale stays one channel until the end, and comes out as three equal channels.
    out = load_resized(files[0], 64, 96)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    # open_image still returns the rotated RGB image and its description.
    arr, info = open_image(files[3])
    assert arr.shape == (230, 150, 3) and (info.width, info.height) == (150, 230)


def test_probe_reads_the_header_only_and_prices_the_decode():
    buf = io.BytesIO()
    Image.new("L", (7000, 8000), 255).save(buf, "PNG")
    probe = images.probe_bytes(buf.getvalue())
    assert (probe.width, probe.height, probe.mode) == (7000, 8000, "L")
    assert probe.peak_bytes == 7000 * 8000 * 2  # greyscale: decoded image + its array
    rgb = io.BytesIO()
    Image.new("RGB", (4000, 3000)).save(rgb, "JPEG")
    drafted = images.probe_bytes(rgb.getvalue(), draft_size=(96, 64))
    assert drafted.image.size == (500, 375)  # JPEG draft: decoded at 1/8 scale
    assert drafted.peak_bytes == 500 * 375 * 8


# The DVC-tracked copy when pulled, else the shared original beside the checkout (as in CI).
REAL = next(
    (p for p in (REPO_ROOT / "data" / "id-cards", REPO_ROOT.parent / "shared" / "datasets" /
                 "id-cards") if p.is_dir()),
    REPO_ROOT / "data" / "id-cards",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    not REAL.is_dir(), reason="neither data/id-cards (dvc pull data.dvc) nor ../shared/datasets"
)
def test_real_data_tensors_are_unchanged():
    files = sorted(p for p in REAL.rglob("*") if p.is_file())
    sample = random.Random(0).sample(files, 60)
    modes = {Image.open(f).mode for f in sample}
    assert {"RGB", "P", "RGBA"} <= modes  # a sample that covers the dataset's kinds
    assert_same(sample, sizes=((64, 96),))
