"""Thumbnails for the UI's grids: decoded safely, shrunk, JPEG-encoded, kept in a cache bounded
by bytes."""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

from sqlvision.imaging import decode


class ByteCache:
    """The most recently used values, up to ``capacity`` bytes in all."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.size = capacity, 0
        self.items: OrderedDict[Any, bytes] = OrderedDict()

    def get(self, key: Any) -> bytes | None:
        """The value of ``key`` (now the most recent), or ``None``."""
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Any, value: bytes) -> None:
        """Keep ``value``, dropping the least recently used values beyond the capacity."""
        old = self.items.pop(key, None)
        self.size += len(value) - (len(old) if old is not None else 0)
        self.items[key] = value
        while self.size > self.capacity and self.items:
            self.size -= len(self.items.popitem(last=False)[1])


def thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """``data`` shrunk to fit ``size`` x ``size``, as JPEG."""
    img = decode(data, "RGB", max_pixels=max_pixels, draft=(size, size))
    img.thumbnail((size, size))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()
