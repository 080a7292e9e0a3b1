"""Decode and validate ONE image: the single loader used by ingest, preprocess, predict and serve.

The format is sniffed from the bytes (Pillow), never from the extension. Whatever the source
mode (grayscale, RGBA, palette, CMYK, 16-bit), the result is an RGB ``uint8`` array with the
EXIF orientation applied. Failures raise :class:`ImageRejected` with a stable reason code.

Decoding is two steps, so that a server can decide from the header alone whether it has the
memory to decode (:func:`probe_bytes`, then :func:`decode_resized`); the file functions
(:func:`open_image`, :func:`load_resized`) run both. Greyscale images stay one channel until
after the resize (OpenCV resizes each channel alike, so the result is the same bytes as resizing
the three equal channels, at a third of the memory), and the EXIF rotation happens in place.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgclf.config import FITS  # how an image meets the model's aspect (data.fit)
from imgclf.errors import ImgclfError

if TYPE_CHECKING:
    from imgclf.data.cache import DecodeCache

# Reason codes, stable strings that reports and tests rely on.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNDECODABLE = "undecodable"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"

DEFAULT_MAX_PIXELS = 60_000_000

# Bytes of memory per decoded pixel at the peak of decoding, by the mode Pillow decodes to: the
# Pillow image (4 bytes a pixel for RGB-like modes, 1 for L) and the numpy copy made from it
# coexist; alpha compositing and mode conversions add one or two more full images.
PEAK_BYTES_PER_PIXEL = {"1": 2, "L": 2, "I;16": 12, "I;16B": 12, "I;16L": 12, "I;16N": 12}
PEAK_BYTES_PER_PIXEL |= {"I": 16, "F": 16, "RGB": 8, "YCbCr": 8, "CMYK": 12, "P": 12}
DEFAULT_PEAK_BYTES_PER_PIXEL = 20  # RGBA, LA, PA and anything rarer: composited onto white


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


@dataclass
class Probe:
    """An image whose header is read and pixels not yet decoded (Pillow opens lazily)."""

    image: Image.Image
    source: str  # the file name or a label such as "upload", for messages
    width: int  # as stored, before EXIF rotation (which does not change the shorter side)
    height: int
    format: str
    mode: str

    @property
    def peak_bytes(self) -> int:
        """About how much memory decoding needs at its peak (after any draft reduction)."""
        w, h = self.image.size  # the draft size once draft mode is set
        return w * h * PEAK_BYTES_PER_PIXEL.get(self.image.mode, DEFAULT_PEAK_BYTES_PER_PIXEL)


def probe_bytes(
    data: bytes,
    source: str = "upload",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Probe:
    """Read the header of an image file's bytes; nothing is decoded yet.

    Args:
        max_pixels: largest accepted width*height.
        draft_size: (width, height) hint that lets JPEG decode at reduced scale (preprocess,
            predict and serve only need the resized image; ingest decodes in full to catch
            damage).

    Raises:
        ImageRejected: empty, not an image, or over ``max_pixels`` (reason code).
    """
    if not data:
        raise ImageRejected(source, EMPTY_FILE, "file has 0 bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(source, TOO_LARGE, str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected(
                source, NOT_AN_IMAGE, "content is not a known image format"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad headers
            raise ImageRejected(source, NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(
            source, TOO_LARGE, f"{width}x{height} exceeds the limit of {max_pixels} pixels"
        )
    probe = Probe(img, source, width, height, img.format or "?", img.mode)
    if draft_size is not None and probe.format == "JPEG":
        img.draft("RGB", draft_size)
    return probe


def _to_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode as uint8: (H, W) for greyscale, else (H, W, 3) RGB, transparency
    composited onto white. :func:`as_rgb` gives the RGB image of either."""
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def as_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) greyscale or (H, W, 3) RGB -> (H, W, 3) RGB (Pillow's L -> RGB: equal channels)."""
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def decode(probe: Probe) -> np.ndarray:
    """Decode a probed image, EXIF rotation applied: (H, W) greyscale or (H, W, 3) RGB.

    Raises:
        ImageRejected: truncated or damaged pixel data (``undecodable``), or a bomb.
    """
    img = probe.image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Truncated files must fail loudly, never decode as a grey half-image.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no rotation
            arr = _to_array(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(probe.source, TOO_LARGE, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - decoder errors vary by codec
            raise ImageRejected(probe.source, UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc
        finally:
            img.close()  # the decoded pixels live in ``arr`` now; free Pillow's copy at once
    return arr


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageRejected(path, UNREADABLE, exc.strerror or str(exc)) from exc


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
        draft_size: see :func:`probe_bytes`.

    Raises:
        ImageRejected: with a reason code.
    """
    path = Path(path)
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest() if data else ""
    probe = probe_bytes(data, str(path), max_pixels=max_pixels, draft_size=draft_size)
    rgb = as_rgb(decode(probe))
    width, height = probe.width, probe.height
    if draft_size is None:
        h, w = rgb.shape[:2]
        width, height = w, h  # after EXIF rotation
        if min(w, h) < min_side:
            raise ImageRejected(path, TOO_SMALL, f"{w}x{h} is below the minimum side of {min_side}")
    return rgb, ImageInfo(
        sha256=digest, width=width, height=height, format=probe.format, mode=probe.mode
    )


def resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an image to exactly (height, width); area interpolation when shrinking."""
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


def draft_size(height: int, width: int) -> tuple[int, int]:
    """The JPEG draft hint for a model input of ``height`` x ``width``: twice its size, so the
    area resize that follows still averages several decoded pixels into each input pixel."""
    return (width * 2, height * 2)


def decode_resized(probe: Probe, height: int, width: int, fit: str = "stretch") -> np.ndarray:
    """Decode a probed image, fit its aspect (:func:`fit_aspect`) and resize it to the model's
    input size: (height, width, 3) uint8."""
    return as_rgb(resize(fit_aspect(decode(probe), height, width, fit), height, width))


def load_resized(
    path: Path | str,
    height: int,
    width: int,
    fit: str = "stretch",
    cache: DecodeCache | None = None,
    **kwargs: int,
) -> np.ndarray:
    """Decode ``path``, fit its aspect and resize it to the model's input size: the one path
    from file to tensor for preprocess, predict and serve (``kwargs``: ``max_pixels``).

    With ``cache`` (preprocess), a file whose bytes were decoded before with the same spec is
    read back instead of decoded (:mod:`imgclf.data.cache`).
    """
    path = Path(path)
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest() if cache is not None else ""
    if cache is not None:
        hit = cache.get(digest)
        if hit is not None and hit.shape == (height, width, 3) and hit.dtype == np.uint8:
            return hit
    probe = probe_bytes(data, str(path), draft_size=draft_size(height, width), **kwargs)
    tensor = decode_resized(probe, height, width, fit)
    if cache is not None:
        cache.put(digest, tensor)
    return tensor
