"""Safe decoding: pixel cap first, truncated data refused, one color mode out."""

from __future__ import annotations

import io
import warnings

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
