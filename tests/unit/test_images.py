import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imgclf import images
from imgclf.images import FITS, ImageRejected, fit_aspect, load_resized, open_image


def _save(img: Image.Image, path, fmt: str, **kw):
    img.save(path, format=fmt, **kw)
    return path


def test_rgb_png(tmp_path):
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :, 0] = 200
    rgb, info = open_image(_save(Image.fromarray(arr), tmp_path / "a.png", "PNG"))
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert (info.width, info.height) == (30, 20)
    assert len(info.sha256) == 64
    assert rgb[0, 0, 0] == 200


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgb, _ = open_image(_save(img, tmp_path / "t.png", "PNG"))
    assert (rgb == 255).all()


def test_grayscale_and_palette_become_rgb(tmp_path):
    gray = Image.new("L", (12, 12), 77)
    rgb, _ = open_image(_save(gray, tmp_path / "g.png", "PNG"))
    assert rgb.shape == (12, 12, 3) and (rgb == 77).all()
    pal = Image.new("RGB", (12, 12), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    rgb, _ = open_image(_save(pal, tmp_path / "p.png", "PNG"))
    assert tuple(rgb[0, 0]) == (10, 200, 30)


def test_cmyk_jpeg_and_16bit_png(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    rgb, _ = open_image(_save(cmyk, tmp_path / "c.jpg", "JPEG"))
    assert rgb.shape == (16, 16, 3) and rgb.mean() > 240
    arr16 = np.full((16, 16), 65535, dtype=np.uint16)
    rgb, _ = open_image(_save(Image.fromarray(arr16), tmp_path / "d.png", "PNG"))
    assert rgb.dtype == np.uint8 and (rgb == 255).all()


def test_png_named_jpg_is_sniffed(tmp_path):
    rgb, info = open_image(_save(Image.new("RGB", (9, 9)), tmp_path / "x.jpg", "PNG"))
    assert info.format == "PNG" and rgb.shape == (9, 9, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "r.jpg"
    img.save(path, format="JPEG", exif=exif.tobytes())
    rgb, info = open_image(path)
    assert rgb.shape[:2] == (40, 20)
    assert (info.width, info.height) == (20, 40)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", images.EMPTY_FILE), (b"hello, I am text", images.NOT_AN_IMAGE)],
)
def test_bad_files_are_rejected_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageRejected) as err:
        open_image(path)
    assert err.value.reason == reason
    assert "bad.jpg" in str(err.value)


def test_truncated_jpeg_is_undecodable(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageRejected) as err:
        open_image(path)
    assert err.value.reason == images.UNDECODABLE


def test_too_small(tmp_path):
    with pytest.raises(ImageRejected) as err:
        open_image(_save(Image.new("RGB", (1, 1)), tmp_path / "dot.png", "PNG"), min_side=8)
    assert err.value.reason == images.TOO_SMALL


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_rejected_from_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(40000, 40000))
    with pytest.raises(ImageRejected) as err:
        open_image(path, max_pixels=50_000_000)
    assert err.value.reason == images.TOO_LARGE


def test_unicode_name(tmp_path):
    path = _save(Image.new("RGB", (10, 10)), tmp_path / "führerschein_é.png", "PNG")
    assert open_image(path)[0].shape == (10, 10, 3)


def test_load_resized_gives_model_size(tmp_path):
    path = _save(Image.new("RGB", (300, 200), (1, 2, 3)), tmp_path / "big.jpg", "JPEG")
    out = load_resized(path, 32, 48)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


def _bands(height: int, width: int, inner: int) -> np.ndarray:
    """Red bands around a green centre band of ``inner`` rows (a card in a portrait photo)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = 255
    top = (height - inner) // 2
    arr[top : top + inner] = (0, 255, 0)
    return arr


def test_fit_aspect_crops_the_centre_to_the_model_aspect():
    tall = _bands(90, 60, 40)  # 2:3 portrait; the 3:2 centre of a 60-wide image is 40 rows
    for fit in ("crop_tall", "crop"):
        out = fit_aspect(tall, 32, 48, fit)
        assert out.shape == (40, 60, 3) and (out == (0, 255, 0)).all()
    assert fit_aspect(tall, 32, 48, "stretch") is tall
    wide = np.arange(20 * 60 * 3, dtype=np.uint32).reshape(20, 60, 3).astype(np.uint8)
    assert fit_aspect(wide, 32, 48, "crop_tall") is wide  # wider than 3:2: left alone
    cropped = fit_aspect(wide, 32, 48, "crop")  # both ways: the centre 30 columns
    assert cropped.shape == (20, 30, 3) and (cropped == wide[:, 15:45]).all()
    exact = np.zeros((40, 60, 3), np.uint8)
    assert all(fit_aspect(exact, 32, 48, f) is exact for f in FITS)
    with pytest.raises(ValueError, match="letterbox"):
        fit_aspect(exact, 32, 48, "letterbox")


def test_load_resized_applies_the_fit(tmp_path):
    path = _save(Image.fromarray(_bands(150, 100, 66)), tmp_path / "portrait.png", "PNG")
    stretched = load_resized(path, 32, 48)
    cropped = load_resized(path, 32, 48, "crop_tall")
    assert cropped.shape == stretched.shape == (32, 48, 3)
    green = np.array([0, 255, 0])
    assert (np.abs(cropped[1:-1].astype(int) - green) <= 8).all()  # only the card is left
    assert (stretched[0] == (255, 0, 0)).all()  # the background is squeezed in, not cut
