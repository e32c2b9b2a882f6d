"""Image metadata and integrity from headers, without decoding pixels.

JPEG and PNG (the bulk of real data) are parsed here in a few microseconds: dimensions and
channel count from the frame header, truncation from the end-of-image marker. Other formats go
through Pillow's lazy ``Image.open``, which also reads only the header. Every path enforces the
pixel cap before anything could allocate the pixel buffer (decompression bombs).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from sqlvision.errors import ImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default cap (about 0.25 GiB of RGBA)

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What ingest records about an image: Pillow's format and mode names."""

    format: str
    width: int
    height: int
    mode: str


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose pixel count exceeds ``max_pixels`` (decompression bombs)."""
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}", "the file is corrupt")
    if max_pixels and width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height:,} pixels exceeds the cap of "
            f"{max_pixels:,} (possible decompression bomb)",
            "raise the cap with --max-pixels if the image is trusted",
        )


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Identify ``data`` and check it is whole; raises :class:`ImageError` naming the problem."""
    if not data:
        raise ImageError("empty file (0 bytes)", "re-copy the file or remove it")
    if data[:3] == b"\xff\xd8\xff":
        info = _probe_jpeg(data)
    elif data[:8] == _PNG_SIGNATURE:
        info = _probe_png(data)
    else:
        info = _probe_with_pillow(data, max_pixels)
    check_pixels(info.width, info.height, max_pixels)
    return info


def _truncated(fmt: str) -> ImageError:
    return ImageError(f"truncated {fmt} (the file ends before the image data does)",
                      "re-copy or re-download the file")


def _probe_jpeg(data: bytes) -> ImageInfo:
    pos, end = 2, len(data)
    frame: tuple[int, int, int] | None = None
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG (bad marker structure)", "re-encode or remove the file")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if marker == 0xD9:
            break
        if pos + 2 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise ImageError("corrupt JPEG (bad segment length)", "re-encode or remove the file")
        if marker in _JPEG_SOF:
            if pos + 8 > end:
                break
            height, width, comps = struct.unpack_from(">HHB", data, pos + 3)
            frame = (width, height, comps)
        elif marker == 0xDA:  # start of scan: entropy-coded data follows, then EOI
            if frame is None:
                raise ImageError("corrupt JPEG (scan before frame header)",
                                 "re-encode or remove the file")
            # EOI cannot occur inside entropy-coded data (0xFF is stuffed), so an EOI after the
            # first scan means the file is whole; thumbnails' EOIs all come before it.
            if data.rfind(b"\xff\xd9", pos) < 0:
                raise _truncated("JPEG")
            width, height, comps = frame
            if height == 0:
                raise ImageError("unsupported JPEG (height defined by DNL marker)",
                                 "re-encode the file")
            return ImageInfo("JPEG", width, height, _JPEG_MODES.get(comps, "RGB"))
        pos += length
    raise _truncated("JPEG")


def _probe_png(data: bytes) -> ImageInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _truncated("PNG") if len(data) < 33 else ImageError(
            "corrupt PNG (missing IHDR header)", "re-encode or remove the file")
    width, height, _depth, color = struct.unpack_from(">IIBB", data, 16)
    if data.rfind(b"IEND", max(0, len(data) - 4096)) < 0:
        raise _truncated("PNG")
    return ImageInfo("PNG", width, height, _PNG_MODES.get(color, "RGB"))


def _probe_with_pillow(data: bytes, max_pixels: int) -> ImageInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                check_pixels(width, height, max_pixels)
                info = ImageInfo(img.format or "UNKNOWN", width, height, img.mode)
                if info.format not in ("GIF", "BMP", "WEBP"):
                    img.load()  # rare formats: no cheap whole-file check, so decode once
                else:
                    _check_container_length(info.format, data)
                return info
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image too large: {exc}",
                             "raise the cap with --max-pixels if the image is trusted") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image (unrecognized file format)",
                             "remove the file or convert it to JPEG/PNG") from exc
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image ({exc})",
                             "re-copy, re-encode or remove the file") from exc


def _check_container_length(fmt: str, data: bytes) -> None:
    """GIF, BMP and WebP state their own length or end marker: a short file is truncated."""
    if fmt == "GIF" and not data.rstrip(b"\x00").endswith(b"\x3b"):
        raise _truncated("GIF")
    if fmt == "BMP" and struct.unpack_from("<I", data, 2)[0] > len(data):
        raise _truncated("BMP")
    if fmt == "WEBP" and struct.unpack_from("<I", data, 4)[0] + 8 > len(data):
        raise _truncated("WEBP")
