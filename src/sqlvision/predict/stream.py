"""Rows to model-ready batches: fetched on a background thread, decoded on a thread pool,
assembled in order. Memory stays bounded by a few fetch batches, whatever the table size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.parallel import chunked, cpu_count, ordered_map, prefetch
from sqlvision.preprocess import PreprocessSpec
from sqlvision.tables import image_bytes


@dataclass
class Decoded:
    """A batch: the keys that decoded, their uint8 pixels, and the keys that failed (with why)."""

    keys: list[Any]
    pixels: np.ndarray
    failed: list[tuple[Any, str]] = field(default_factory=list)


def decode_one(spec: PreprocessSpec, key: Any, data: bytes | None,
               uri: str | None) -> tuple[Any, np.ndarray | None, str | None]:
    """``(key, pixels, None)`` or ``(key, None, reason)``: a bad image never raises."""
    try:
        return key, spec(image_bytes(data, uri)), None
    except SqlvisionError as exc:
        return key, None, str(exc)


def decode_rows(spec: PreprocessSpec, rows: Iterator[tuple[Any, bytes | None, str | None]],
                batch_size: int = 32, workers: int | None = None) -> Iterator[Decoded]:
    """Decode ``(key, data, uri)`` rows in parallel, in order, into batches of ``batch_size``.

    One decode thread per core plus one: inference uses the cores too, so more threads only
    steal time from it.
    """
    def work(chunk: list[tuple[Any, bytes | None, str | None]]) -> list[tuple[Any, Any, Any]]:
        return [decode_one(spec, *row) for row in chunk]

    keys: list[Any] = []
    pixels: list[np.ndarray] = []
    failed: list[tuple[Any, str]] = []
    for chunk in ordered_map(work, chunked(rows, 16), workers=workers or cpu_count() + 1):
        for key, image, reason in chunk:
            if image is None:
                failed.append((key, reason or "unreadable"))
                continue
            keys.append(key)
            pixels.append(image)
            if len(keys) == batch_size:
                yield Decoded(keys, np.stack(pixels), failed)
                keys, pixels, failed = [], [], []
    if keys or failed:
        empty = np.zeros((0, *spec.input_shape), np.uint8)
        yield Decoded(keys, np.stack(pixels) if pixels else empty, failed)


@dataclass
class Scored:
    """A group of rows to write at once: the keys scored, their outputs, and the failures."""

    keys: list[Any]
    outputs: np.ndarray
    failed: list[tuple[Any, str]]

    @property
    def rows(self) -> int:
        """Rows in the group, scored or failed."""
        return len(self.keys) + len(self.failed)


def score_batches(batches: Iterable[Decoded], score: Callable[[np.ndarray], np.ndarray],
                  group_rows: int = 256) -> Iterator[Scored]:
    """Score each decoded batch and yield the results in groups of about ``group_rows`` rows.

    Inference batches are small (fast on a CPU); writes are not (a transaction per group).
    """
    keys: list[Any] = []
    outputs: list[np.ndarray] = []
    failed: list[tuple[Any, str]] = []
    for batch in batches:
        if batch.keys:
            keys.extend(batch.keys)
            outputs.append(score(batch.pixels))
        failed.extend(batch.failed)
        if len(keys) + len(failed) >= group_rows:
            yield Scored(keys, np.concatenate(outputs) if outputs else np.zeros((0, 1)), failed)
            keys, outputs, failed = [], [], []
    if keys or failed:
        yield Scored(keys, np.concatenate(outputs) if outputs else np.zeros((0, 1)), failed)


def table_rows(backend: Backend, sql: str, params: Sequence[Any] = (),
               fetch_rows: int = 256) -> Iterator[tuple[Any, bytes | None, str | None]]:
    """``(key, data, uri)`` rows of a three-column query, fetched ahead on a background thread."""
    for batch in prefetch(backend.stream(sql, params, batch_rows=fetch_rows), depth=2):
        yield from zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True)
