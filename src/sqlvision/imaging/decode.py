"""Safe decoding: pixel cap first, truncated data refused, one color mode out.

The decode rule says how stored pixels become the image a model sees:

* rule 1 (models saved before rules existed): pixels as stored; 16-bit grayscale clipped to
  255 by Pillow's conversion.
* rule 2 (:data:`DECODE_RULE`, the default): the EXIF orientation applied (the image as
  every viewer shows it), 16-bit samples scaled to 8 bits (``v >> 8``).

Probe, show, training and prediction all decode through here, and a model's preprocessing
spec records its rule, so a model keeps the behaviour it was trained with.
"""

from __future__ import annotations

import functools
import importlib
import io
import warnings
from types import ModuleType

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from sqlvision.errors import ImageError
from sqlvision.imaging.probe import (
    DEFAULT_MAX_PIXELS,
    allow_pixels,
    check_pixels,
    probe,
    too_many_pixels,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False
DECODE_RULES = (1, 2)
DECODE_RULE = 2
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode(data: bytes, mode: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
           draft: tuple[int, int] | None = None, rule: int = DECODE_RULE) -> Image.Image:
    """Decode ``data`` to a loaded Pillow image, converted to ``mode`` (e.g. ``"RGB"``, ``"L"``),
    by decode ``rule`` (see the module doc).

    ``draft``: a size the caller will shrink to; JPEGs then decode at the smallest DCT scale
    (1/2, 1/4, 1/8) still at least that large. Raises :class:`ImageError` for empty,
    unidentified, corrupt, truncated or oversized input.
    """
    if not data:
        raise ImageError("empty image (0 bytes)", "re-ingest the file")
    cap = allow_pixels(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data))
            check_pixels(img.width, img.height, max_pixels)
            if draft is not None and img.format == "JPEG":
                img.draft(mode if mode in ("RGB", "L") else None, draft)
            img.load()
        except Image.DecompressionBombError as exc:
            raise too_many_pixels("its size", cap) from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image (unrecognized format)",
                             "remove the row or fix its data") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image ({exc})",
                             "re-ingest the file or remove the row") from exc
        except Exception as exc:  # a decoder plugin's own error (AVIF: RuntimeError)
            raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})",
                             "re-ingest the file or remove the row") from exc
    if rule >= 2:
        img = _displayed(img)
    if mode and img.mode != mode:
        if img.mode in ("P", "LA", "RGBA", "PA") and mode == "RGB":
            img = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.getchannel("A"))
            return background
        img = img.convert(mode)
    return img


def _displayed(img: Image.Image) -> Image.Image:
    """Rule 2: EXIF orientation applied, 16-bit grayscale scaled to 8 bits."""
    if img.getexif().get(0x0112, 1) not in (1, None):
        img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_GRAY:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    return img


@functools.cache
def _simplejpeg() -> ModuleType | None:
    """libjpeg-turbo straight into NumPy (the ``train`` extra), or None: Pillow then decodes."""
    try:
        return importlib.import_module("simplejpeg")
    except ImportError:
        return None


_FAST_COLORSPACES = {"RGB": ("YCbCr", "Gray", "RGB"), "L": ("YCbCr", "Gray")}


def decode_array(data: bytes, mode: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: tuple[int, int] | None = None, rule: int = DECODE_RULE) -> np.ndarray:
    """:func:`decode` as a uint8 ``H x W [x C]`` array, the same pixels.

    A clean JPEG that needs no reduced-scale decode goes straight from libjpeg-turbo into the
    array (simplejpeg, strict: any libjpeg warning counts as failure); that skips Pillow's
    per-image copy and is about a fifth faster. Everything else, and anything the fast path
    refuses, goes through :func:`decode`, so errors and fallbacks are exactly Pillow's.
    """
    fast = _jpeg_array(data, mode, max_pixels, draft, rule)
    return fast if fast is not None else np.asarray(decode(data, mode, max_pixels, draft, rule))


def _jpeg_array(data: bytes, mode: str, max_pixels: int, draft: tuple[int, int] | None,
                rule: int = DECODE_RULE) -> np.ndarray | None:
    sj = _simplejpeg()
    if sj is None or mode not in _FAST_COLORSPACES or data[:2] != b"\xff\xd8":
        return None
    if rule >= 2 and data.find(b"Exif", 0, 65536) >= 0:
        try:
            if probe(data, 0).orientation != 1:
                return None  # Pillow turns it
        except ImageError:
            return None
    try:
        height, width, colorspace, _ = sj.decode_jpeg_header(data)
        if colorspace not in _FAST_COLORSPACES[mode]:
            return None  # CMYK and YCCK: Pillow's conversion
        if draft is not None and min(width // draft[0], height // draft[1]) >= 2:
            return None  # Pillow decodes at 1/2, 1/4 or 1/8 scale
        check_pixels(width, height, max_pixels)
        out: np.ndarray = sj.decode_jpeg(data, colorspace="RGB" if mode == "RGB" else "GRAY")
    except ValueError:
        return None
    return out if mode == "RGB" else out.reshape(height, width)
