"""Header probing and safe decoding on real encoded images and broken ones."""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from sqlvision.errors import ImageError
from sqlvision.imaging import decode, probe
from tests.conftest import image_bytes


@pytest.mark.parametrize(
    ("fmt", "mode", "expected_mode"),
    [("JPEG", "RGB", "RGB"), ("JPEG", "L", "L"), ("JPEG", "CMYK", "CMYK"), ("PNG", "RGB", "RGB"),
     ("PNG", "RGBA", "RGBA"), ("PNG", "L", "L"), ("GIF", "L", "L"), ("BMP", "RGB", "RGB"),
     ("WEBP", "RGB", "RGB"), ("TIFF", "RGB", "RGB")],
)
def test_probe_reads_size_format_and_mode(fmt: str, mode: str, expected_mode: str) -> None:
    info = probe(image_bytes(fmt, (37, 21), mode))
    assert (info.format, info.width, info.height) == (fmt, 37, 21)
    if fmt != "GIF":  # GIF stores a palette
        assert info.mode == expected_mode


def test_probe_agrees_with_pillow_on_progressive_jpeg() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(image_bytes("PNG", (64, 48)))).save(buf, "JPEG", progressive=True)
    assert probe(buf.getvalue()).width == 64


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_truncated_images_are_refused(fmt: str) -> None:
    data = image_bytes(fmt, (64, 64))
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        probe(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"hello, I am text\n", "not an image"), (b"\xff\xd8\xff" + b"\x00" * 10, "JPEG")],
)
def test_non_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        probe(data)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _png_header(100_000, 100_000)
    with pytest.raises(ImageError, match="too large"):
        probe(bomb)
    with pytest.raises(ImageError, match="too large"):
        decode(bomb)
    assert probe(image_bytes("PNG", (100, 100)), max_pixels=10_000).width == 100
    with pytest.raises(ImageError, match="--max-pixels"):
        probe(image_bytes("PNG", (100, 101)), max_pixels=10_000)


def test_decode_converts_modes() -> None:
    assert decode(image_bytes("PNG", (8, 8), "RGBA"), mode="RGB").mode == "RGB"
    assert decode(image_bytes("JPEG", (8, 8), "RGB"), mode="L").mode == "L"
    data = image_bytes("JPEG", (256, 256))
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        decode(data[: len(data) // 2])


def _jpeg_variants() -> dict[str, bytes]:
    """JPEGs the libjpeg-turbo fast path takes, and ones it must hand to Pillow."""
    import io

    from PIL import Image

    def save(img: Image.Image, **options: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "JPEG", **options)
        return buf.getvalue()

    photo = Image.open(io.BytesIO(image_bytes("PNG", (400, 533)))).convert("RGB")
    broken = bytearray(save(photo, quality=90))
    broken[3201:3221] = bytes(b ^ 0xFF for b in broken[3201:3221])
    return {
        "baseline": save(photo), "progressive": save(photo, progressive=True),
        "4:4:4": save(photo, subsampling=0), "gray": save(photo.convert("L")),
        "cmyk": save(photo.convert("CMYK")), "large (reduced-scale decode)": save(photo.resize((1000, 1400))),
        "trailing bytes": save(photo) + b"trailing", "odd size": save(photo.resize((37, 21))),
        "corrupt scan data": bytes(broken),
    }


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decode_array_gives_pillows_pixels_and_errors(mode: str) -> None:
    import numpy as np

    from sqlvision.imaging import decode_array
    from sqlvision.imaging.decode import _jpeg_array

    variants = _jpeg_variants()
    took_fast_path = {name for name, data in variants.items()
                      if _jpeg_array(data, mode, 10**9, (448, 448)) is not None}
    assert took_fast_path == {"baseline", "progressive", "4:4:4", "gray", "trailing bytes", "odd size"}
    for name, data in variants.items():
        try:
            expected = np.asarray(decode(data, mode, draft=(448, 448)))
        except ImageError as exc:
            with pytest.raises(ImageError, match=re.escape(str(exc))):
                decode_array(data, mode, draft=(448, 448))
            continue
        got = decode_array(data, mode, draft=(448, 448))
        assert got.dtype == np.uint8 and got.flags.c_contiguous, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    with pytest.raises(ImageError, match="too large"):
        decode_array(_jpeg_variants()["baseline"], mode, max_pixels=1000)
    truncated = _jpeg_variants()["baseline"][:5000]
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        decode_array(truncated, mode)
