"""Rows to scored batches: fetched on a background thread, decoded and scored on a thread pool,
kept in order. Memory stays bounded by a few fetch batches, whatever the table size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models.runtime import OnnxClassifier
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


def decode_batch(spec: PreprocessSpec, rows: Sequence[tuple[Any, bytes | None, str | None]]) -> Decoded:
    """Decode ``(key, data, uri)`` rows into one batch; rows that fail are listed, not raised."""
    keys: list[Any] = []
    pixels: list[np.ndarray] = []
    failed: list[tuple[Any, str]] = []
    for key, image, reason in (decode_one(spec, *row) for row in rows):
        if image is None:
            failed.append((key, reason or "unreadable"))
        else:
            keys.append(key)
            pixels.append(image)
    return Decoded(keys, np.stack(pixels) if pixels else np.zeros((0, *spec.input_shape), np.uint8),
                   failed)


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


def score_rows(classifier: OnnxClassifier, rows: Iterable[tuple[Any, bytes | None, str | None]], *,
               features: bool = False, batch_size: int | None = None, workers: int | None = None,
               group_rows: int = 256) -> Iterator[Scored]:
    """``(key, data, uri)`` rows decoded by the classifier's spec and scored (probabilities, or
    ``features``) in batches of ``batch_size`` (default: the classifier's), in order, yielded
    in groups of about ``group_rows`` rows (one write each).

    ``classifier.callers`` > 1 (CPU inference on single-threaded sessions): that many threads
    (or ``workers``) each decode a batch and score it. Every core does one or the other, never
    both at once, and a batch stays in its core's cache from decode to score. One caller (a
    GPU, or an engine that is multi-threaded itself): batches decode ahead on ``workers``
    threads (default: one per core plus one) while this thread scores.
    """
    spec, callers = classifier.spec, classifier.callers
    score = classifier.embed if features else classifier.predict_proba
    def decode_and_score(batch: list[tuple[Any, bytes | None, str | None]]) -> tuple[Decoded, Any]:
        decoded = decode_batch(spec, batch)
        return decoded, score(decoded.pixels) if decoded.keys else None

    batches = chunked(rows, batch_size or classifier.batch_size)
    if callers > 1:
        scored: Iterator[tuple[Decoded, Any]] = ordered_map(decode_and_score, batches,
                                                             workers=workers or callers)
    else:
        decoded = ordered_map(lambda b: decode_batch(spec, b), batches, workers=workers or cpu_count() + 1)
        scored = ((d, score(d.pixels) if d.keys else None) for d in decoded)
    group = Scored([], np.zeros((0, 1)), [])
    outputs: list[np.ndarray] = []
    for decoded_batch, output in scored:
        group.keys.extend(decoded_batch.keys)
        group.failed.extend(decoded_batch.failed)
        if output is not None:
            outputs.append(output)
        if group.rows >= group_rows:
            group.outputs = np.concatenate(outputs) if outputs else group.outputs
            yield group
            group, outputs = Scored([], np.zeros((0, 1)), []), []
    if group.rows:
        group.outputs = np.concatenate(outputs) if outputs else group.outputs
        yield group


def table_rows(backend: Backend, sql: str, params: Sequence[Any] = (),
               fetch_rows: int = 256) -> Iterator[tuple[Any, bytes | None, str | None]]:
    """``(key, data, uri)`` rows of a three-column query, fetched ahead on a background thread."""
    for batch in prefetch(backend.stream(sql, params, batch_rows=fetch_rows), depth=2):
        yield from zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True)
