"""Images for training, streamed from the database: fetched in blocks on a background thread,
decoded and augmented on a thread pool, assembled into uint8 batches.

Only the id and label of each selected row are held for the run; image bytes are fetched block
by block. Decoded pixels (already resized by the spec, exactly what inference sees) are kept in a
bounded cache so later epochs skip fetch and decode for as many images as the budget holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.parallel import chunked, default_workers, ordered_map, prefetch
from sqlvision.preprocess import PreprocessSpec
from sqlvision.tables import ImageTable, image_bytes
from sqlvision.train.augment import Augment

FETCH_IDS_PER_QUERY = 500  # below every engine's bound-parameter limit


@dataclass
class Selection:
    """The labeled rows a run uses: ids, label names, splits (``None`` when absent)."""

    ids: list[Any]
    labels: list[str]
    splits: list[str | None]
    unlabeled: int = 0


def select_rows(backend: Backend, table: ImageTable, where: str | None = None) -> Selection:
    """Ids, labels and splits of the rows to train on (labeled, not flagged missing)."""
    if table.label is None:
        raise SqlvisionError(f"table {table.name!r} has no label column",
                             "name it with --label-col")
    q = backend.quote_column
    conditions = [f"({where})"] if where else []
    if table.uri is not None and "missing" in backend.table_columns(table.name):
        conditions.append(f"({q('missing')} IS NULL OR {q('missing')} = FALSE)")
    base = " AND ".join(conditions) or "1 = 1"
    split = q(table.split) if table.split else "NULL"
    rows = backend.query(
        f"SELECT {q(table.id)}, {q(table.label)}, {split} FROM {backend.quote(table.name)} "
        f"WHERE {base} AND {q(table.label)} IS NOT NULL ORDER BY {q(table.id)}")
    unlabeled = backend.scalar(
        f"SELECT count(*) FROM {backend.quote(table.name)} WHERE {base} AND {q(table.label)} IS NULL")
    return Selection(ids=rows.column(0).to_pylist(),
                     labels=[str(table.label_of(v)) for v in rows.column(1).to_pylist()],
                     splits=[None if v is None else str(v) for v in rows.column(2).to_pylist()],
                     unlabeled=int(unlabeled or 0))


class PixelCache:
    """Decoded, resized pixels by row id, up to ``budget`` bytes (then new entries are dropped)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.items: dict[Any, np.ndarray] = {}
        self.lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        return self.items.get(key)

    def put(self, key: Any, pixels: np.ndarray) -> None:
        with self.lock:
            if key not in self.items and self.used + pixels.nbytes <= self.budget:
                self.items[key] = pixels
                self.used += pixels.nbytes


@dataclass
class Batch:
    """One batch: uint8 pixels ``N x C x H x W``, class indices, and rows that failed to decode."""

    pixels: np.ndarray
    targets: np.ndarray
    failed: list[tuple[Any, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Item:
    position: int
    key: Any
    target: int
    data: bytes | None = None
    uri: str | None = None


class ImageStream:
    """Batches of one table's images, preprocessed by ``spec``."""

    def __init__(self, backend: Backend, table: ImageTable, spec: PreprocessSpec,
                 cache_bytes: int = 1 << 30, workers: int | None = None) -> None:
        self.backend, self.table, self.spec = backend, table, spec
        self.cache = PixelCache(cache_bytes)
        self.workers = workers or default_workers()
        self.bad: dict[Any, str] = {}  # rows that failed to decode: skipped in every later epoch

    def fetch(self, keys: Sequence[Any]) -> dict[Any, tuple[bytes | None, str | None]]:
        """Image bytes (or uri, in reference mode) of ``keys``, in as few queries as allowed."""
        q = self.backend.quote_column
        t = self.table
        uri = q(t.uri) if t.uri else "NULL"
        found: dict[Any, tuple[bytes | None, str | None]] = {}
        for part in chunked(keys, FETCH_IDS_PER_QUERY):
            marks = ", ".join("?" for _ in part)
            rows = self.backend.query(
                f"SELECT {q(t.id)}, {q(t.image)}, {uri} FROM {self.backend.quote(t.name)} "
                f"WHERE {q(t.id)} IN ({marks})", part)
            for key, data, location in zip(*(c.to_pylist() for c in rows.columns), strict=True):
                found[key] = (data, location)
        return found

    def batches(self, keys: Sequence[Any], targets: Sequence[int] | np.ndarray, batch_size: int, *,
                seed: int | None = None, epoch: int = 0, augment: Augment | None = None,
                skip_batches: int = 0, drop_last: bool = False) -> Iterator[Batch]:
        """Batches over ``keys`` (shuffled by ``seed`` and ``epoch`` when ``seed`` is given),
        starting after ``skip_batches`` batches: a resumed epoch sees the same order."""
        order = np.arange(len(keys))
        if seed is not None:
            order = np.random.default_rng([seed, epoch]).permutation(len(keys))
        order = order[skip_batches * batch_size:]
        block = max(batch_size * 4, 256)

        def load_blocks() -> Iterator[list[_Item]]:
            for positions in chunked(order.tolist(), block):
                items = [_Item(p, keys[p], int(targets[p])) for p in positions
                         if keys[p] not in self.bad]
                needed = [it.key for it in items if self.cache.get(it.key) is None]
                rows = self.fetch(needed) if needed else {}
                for it in items:
                    if it.key in rows:
                        it.data, it.uri = rows[it.key]
                yield items

        def flat() -> Iterator[_Item]:
            for items in prefetch(load_blocks(), depth=2):
                yield from items

        def work(items: list[_Item]) -> list[tuple[_Item, np.ndarray | None, str | None]]:
            return [self._prepare(it, seed, epoch, augment) for it in items]

        pixels: list[np.ndarray] = []
        labels: list[int] = []
        failed: list[tuple[Any, str]] = []
        for chunk in ordered_map(work, chunked(flat(), 16), workers=self.workers):
            for item, image, reason in chunk:
                if image is None:
                    self.bad[item.key] = reason or "unreadable"
                    failed.append((item.key, reason or "unreadable"))
                    continue
                pixels.append(image)
                labels.append(item.target)
                if len(pixels) == batch_size:
                    yield Batch(np.stack(pixels), np.asarray(labels, np.int64), failed)
                    pixels, labels, failed = [], [], []
        if pixels and not drop_last:
            yield Batch(np.stack(pixels), np.asarray(labels, np.int64), failed)
        elif failed:
            yield Batch(np.zeros((0, *self.spec.input_shape), np.uint8), np.zeros(0, np.int64), failed)

    def _prepare(self, item: _Item, seed: int | None, epoch: int,
                 augment: Augment | None) -> tuple[_Item, np.ndarray | None, str | None]:
        image = self.cache.get(item.key)
        if image is None:
            try:
                image = self.spec(image_bytes(item.data, item.uri))
            except SqlvisionError as exc:
                return item, None, str(exc)
            self.cache.put(item.key, image)
        if augment is not None:
            rng = np.random.default_rng([seed or 0, epoch, item.position, 7])
            image = np.ascontiguousarray(augment(image, rng))
        return item, image, None
