"""Image metadata and integrity from headers, without decoding pixels.

JPEG and PNG (the bulk of real data) are parsed here in a few microseconds: dimensions and
channel count from the frame header, truncation from the end-of-image marker. Other formats go
through Pillow's lazy ``Image.open``, which also reads only the header. Every path enforces the
pixel cap before anything could allocate the pixel buffer (decompression bombs).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from sqlvision.errors import ImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default cap (about 0.25 GiB of RGBA)
MAX_PIXELS_ENV = "SQLVISION_MAX_PIXELS"  # set by every verb's --max-pixels

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
#: EXIF orientations that turn the image a quarter (width and height swap)
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What ingest records about an image: Pillow's format and mode names (``I;16`` for 16-bit
    grayscale), and the size as displayed, after its EXIF orientation (``orientation``, 1-8)."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1

    def oriented(self) -> ImageInfo:
        """This info with width and height as the image is displayed."""
        if self.orientation not in TRANSPOSED_ORIENTATIONS:
            return self
        return ImageInfo(self.format, self.height, self.width, self.mode, self.orientation)


def pixel_cap(max_pixels: int) -> int:
    """The pixel cap in force: ``$SQLVISION_MAX_PIXELS`` (what ``--max-pixels`` sets, for every
    verb) over the caller's own (ingest's setting, a model's spec); 0 means no cap."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return max_pixels
    try:
        return max(0, int(text))
    except ValueError:
        raise ImageError(f"bad {MAX_PIXELS_ENV} value {text!r}", "use a whole number of pixels"
                         ) from None


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse images whose pixel count exceeds the cap (decompression bombs)."""
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}", "the file is corrupt")
    cap = pixel_cap(max_pixels)
    if cap and width * height > cap:
        raise too_many_pixels(f"{width}x{height} = {width * height:,} pixels", cap)


def too_many_pixels(what: str, cap: int) -> ImageError:
    """The one message for an image over the pixel cap."""
    return ImageError(f"image too large: {what} exceeds the cap of {cap:,} pixels (possible "
                      "decompression bomb)",
                      "raise the cap with --max-pixels N (or SQLVISION_MAX_PIXELS=N) if the "
                      "image is trusted")


def allow_pixels(max_pixels: int) -> int:
    """Make Pillow's own bomb check (at twice ``Image.MAX_IMAGE_PIXELS``) no stricter than the
    cap in force, so the cap is the one limit; returns the cap."""
    cap = pixel_cap(max_pixels)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and (cap == 0 or cap > limit):
        Image.MAX_IMAGE_PIXELS = cap or None
    return cap


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
    return info.oriented()


def _truncated(fmt: str) -> ImageError:
    return ImageError(f"truncated {fmt} (the file ends before the image data does)",
                      "re-copy or re-download the file")


def _probe_jpeg(data: bytes) -> ImageInfo:
    pos, end = 2, len(data)
    frame: tuple[int, int, int] | None = None
    orientation = 1
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
        if marker == 0xE1 and data.startswith(b"Exif\0\0", pos + 2):
            orientation = exif_orientation(data[pos + 8:pos + length])
        elif marker in _JPEG_SOF:
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
            return ImageInfo("JPEG", width, height, _JPEG_MODES.get(comps, "RGB"), orientation)
        pos += length
    raise _truncated("JPEG")


def _probe_png(data: bytes) -> ImageInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _truncated("PNG") if len(data) < 33 else ImageError(
            "corrupt PNG (missing IHDR header)", "re-encode or remove the file")
    width, height, depth, color = struct.unpack_from(">IIBB", data, 16)
    if data.rfind(b"IEND", max(0, len(data) - 4096)) < 0:
        raise _truncated("PNG")
    mode = "I;16" if color == 0 and depth == 16 else _PNG_MODES.get(color, "RGB")
    return ImageInfo("PNG", width, height, mode, _png_orientation(data))


def _png_orientation(data: bytes) -> int:
    """The orientation in a PNG's ``eXIf`` chunk (before the image data), else 1."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            return exif_orientation(data[pos + 8:pos + 8 + length])
        if kind in (b"IDAT", b"IEND"):
            return 1
        pos += 12 + length
    return 1


def exif_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of a TIFF-structured EXIF block; 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _probe_with_pillow(data: bytes, max_pixels: int) -> ImageInfo:
    cap = allow_pixels(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                check_pixels(width, height, max_pixels)
                orientation = int(img.getexif().get(0x0112, 1) or 1)
                info = ImageInfo(img.format or "UNKNOWN", width, height, img.mode,
                                 orientation if 1 <= orientation <= 8 else 1)
                if info.format not in ("GIF", "BMP", "WEBP"):
                    img.load()  # rare formats: no cheap whole-file check, so decode once
                else:
                    _check_container_length(info.format, data)
                return info
        except Image.DecompressionBombError as exc:
            raise too_many_pixels("its size", cap) from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image (unrecognized file format)",
                             "remove the file or convert it to JPEG/PNG") from exc
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image ({exc})",
                             "re-copy, re-encode or remove the file") from exc
        except Exception as exc:  # a decoder plugin's own error (AVIF: RuntimeError)
            raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})",
                             "re-copy, re-encode or remove the file") from exc


def _check_container_length(fmt: str, data: bytes) -> None:
    """GIF, BMP and WebP state their own length or end marker: a short file is truncated."""
    if fmt == "GIF" and not data.rstrip(b"\x00").endswith(b"\x3b"):
        raise _truncated("GIF")
    if fmt == "BMP" and struct.unpack_from("<I", data, 2)[0] > len(data):
        raise _truncated("BMP")
    if fmt == "WEBP" and struct.unpack_from("<I", data, 4)[0] + 8 > len(data):
        raise _truncated("WEBP")
