"""Safe decoding: pixel cap first, truncated data refused, one color mode out."""

from __future__ import annotations

import functools
import importlib
import io
import warnings
from types import ModuleType

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sqlvision.errors import ImageError
from sqlvision.imaging.probe import DEFAULT_MAX_PIXELS, check_pixels

ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode(data: bytes, mode: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
           draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` to a loaded Pillow image, converted to ``mode`` (e.g. ``"RGB"``, ``"L"``).

    ``draft``: a size the caller will shrink to; JPEGs then decode at the smallest DCT scale
    (1/2, 1/4, 1/8) still at least that large. Raises :class:`ImageError` for empty,
    unidentified, corrupt, truncated or oversized input.
    """
    if not data:
        raise ImageError("empty image (0 bytes)", "re-ingest the file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data))
            check_pixels(img.width, img.height, max_pixels)
            if draft is not None and img.format == "JPEG":
                img.draft(mode if mode in ("RGB", "L") else None, draft)
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image too large: {exc}",
                             "raise the cap with --max-pixels if the image is trusted") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image (unrecognized format)",
                             "remove the row or fix its data") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image ({exc})",
                             "re-ingest the file or remove the row") from exc
    if mode and img.mode != mode:
        if img.mode in ("P", "LA", "RGBA", "PA") and mode == "RGB":
            img = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.getchannel("A"))
            return background
        img = img.convert(mode)
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
                 draft: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`decode` as a uint8 ``H x W [x C]`` array, the same pixels.

    A clean JPEG that needs no reduced-scale decode goes straight from libjpeg-turbo into the
    array (simplejpeg, strict: any libjpeg warning counts as failure); that skips Pillow's
    per-image copy and is about a fifth faster. Everything else, and anything the fast path
    refuses, goes through :func:`decode`, so errors and fallbacks are exactly Pillow's.
    """
    fast = _jpeg_array(data, mode, max_pixels, draft)
    return fast if fast is not None else np.asarray(decode(data, mode, max_pixels, draft))


def _jpeg_array(data: bytes, mode: str, max_pixels: int,
                draft: tuple[int, int] | None) -> np.ndarray | None:
    sj = _simplejpeg()
    if sj is None or mode not in _FAST_COLORSPACES or data[:2] != b"\xff\xd8":
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
