"""Decode and validate ONE image: the single loader used by ingest, preprocess and predict.

The format is sniffed from the bytes (Pillow), never from the extension. Whatever the source
mode (grayscale, RGBA, palette, CMYK, 16-bit), the result is an RGB ``uint8`` array with the
EXIF orientation applied. Failures raise :class:`ImageRejected` with a stable reason code.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgclf.config import FITS  # how an image meets the model's aspect (data.fit)
from imgclf.errors import ImgclfError

# Reason codes, stable strings that reports and tests rely on.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNDECODABLE = "undecodable"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"

DEFAULT_MAX_PIXELS = 60_000_000


class ImageRejected(ImgclfError):
    """An image file cannot be used; ``reason`` is one of the module's reason codes."""

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records about an accepted file."""

    sha256: str
    width: int
    height: int
    format: str
    mode: str


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an RGB uint8 array, compositing transparency onto white."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def open_image(
    path: Path | str,
    *,
    min_side: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` to an RGB uint8 array and describe it.

    Args:
        min_side: smallest accepted width or height (after EXIF rotation).
        max_pixels: largest accepted width*height, checked from the header before decoding.
        draft_size: (width, height) hint that lets JPEG decode at reduced scale (preprocess
            and predict only need the resized image; ingest decodes in full to catch damage).

    Raises:
        ImageRejected: with a reason code.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageRejected(path, UNREADABLE, exc.strerror or str(exc)) from exc
    if not data:
        raise ImageRejected(path, EMPTY_FILE, "file has 0 bytes")
    digest = hashlib.sha256(data).hexdigest()

    from io import BytesIO

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(path, TOO_LARGE, str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected(path, NOT_AN_IMAGE, "content is not a known image format") from exc
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad headers
            raise ImageRejected(path, NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from exc

        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(
                path, TOO_LARGE, f"{width}x{height} exceeds the limit of {max_pixels} pixels"
            )
        fmt = img.format or "?"
        mode = img.mode
        # Truncated files must fail loudly, never decode as a grey half-image.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            if draft_size is not None and fmt == "JPEG":
                img.draft("RGB", draft_size)
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img) or img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(path, TOO_LARGE, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - decoder errors vary by codec
            raise ImageRejected(path, UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc

    h, w = rgb.shape[:2]
    if draft_size is None:
        width, height = w, h  # after EXIF rotation
        if min(w, h) < min_side:
            raise ImageRejected(path, TOO_SMALL, f"{w}x{h} is below the minimum side of {min_side}")
    return rgb, ImageInfo(sha256=digest, width=width, height=height, format=fmt, mode=mode)


def resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB image to exactly (height, width); area interpolation when shrinking."""
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = rgb.shape[0] > height or rgb.shape[1] > width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


def fit_aspect(rgb: np.ndarray, height: int, width: int, fit: str = "stretch") -> np.ndarray:
    """Crop ``rgb`` towards the aspect ratio ``width:height`` before :func:`resize`.

    ``stretch`` leaves it alone (resize distorts it); ``crop_tall`` centre-crops images that are
    taller than the target aspect (portrait or square photos of a landscape card, whose top and
    bottom are mostly background) and leaves wider ones alone; ``crop`` centre-crops both ways.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    h, w = rgb.shape[:2]
    if fit == "stretch" or w * height == h * width:
        return rgb
    if w * height < h * width:  # taller than the target: keep the full width
        keep = max(1, round(w * height / width))
        top = (h - keep) // 2
        return rgb[top : top + keep]
    if fit == "crop":  # wider than the target: keep the full height
        keep = max(1, round(h * width / height))
        left = (w - keep) // 2
        return rgb[:, left : left + keep]
    return rgb


def load_resized(
    path: Path | str, height: int, width: int, fit: str = "stretch", **kwargs: int
) -> np.ndarray:
    """Decode ``path``, fit its aspect (:func:`fit_aspect`) and resize it to the model's input
    size: the one path from file to tensor for preprocess, predict and serve."""
    rgb, _ = open_image(path, draft_size=(width * 2, height * 2), **kwargs)
    return resize(fit_aspect(rgb, height, width, fit), height, width)
