"""The ingest pipeline: scan, skip what is already there, read + hash + probe in parallel,
write in atomic batches.

Each batch (its rows and its error records) commits in one transaction, so a killed run leaves
whole batches only, and a rerun skips every uri already stored: no duplicates, nothing lost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sqlvision.catalog import (
    IMAGE_COLUMNS,
    INGEST_ERRORS,
    REQUIRED_IMAGE_COLUMNS,
    ensure_ingest_errors,
    utcnow,
)
from sqlvision.db.base import Backend, arrow_schema
from sqlvision.errors import ImageError, SqlvisionError
from sqlvision.imaging import DEFAULT_MAX_PIXELS, ImageInfo, decode, probe
from sqlvision.ingest.labeling import LabelRule, SplitRule
from sqlvision.ingest.sources import LOCAL, Candidate, scan_sources
from sqlvision.parallel import BackgroundWriter, chunked, default_workers, ordered_map
from sqlvision.progress import progress_bar
from sqlvision.storage import display_path

DEFAULT_MAX_BYTES = 512 << 20  # larger than any image at the default pixel cap, uncompressed
IMAGE_SCHEMA = arrow_schema(IMAGE_COLUMNS)
URI_COLUMN = next(c for c in IMAGE_COLUMNS if c.name == "uri")
_ERROR_SCHEMA = pa.schema([("table_name", pa.string()), ("path", pa.string()),
                           ("reason", pa.string()), ("error_at", pa.timestamp("us"))])


@dataclass
class IngestReport:
    """What one ingest run did; ``summary()`` is the line the CLI prints."""

    table: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    missing: int = 0
    restored: int = 0
    ignored: int = 0
    unlabeled: int = 0
    split_kept: int = 0
    resplit: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        """Files that could not be ingested (each has a row in ``sv_ingest_errors``)."""
        return len(self.errors)

    def summary(self) -> str:
        """One line: counts, then the kinds of problems and where to read them."""
        parts = [f"{self.added} added"]
        if self.updated:
            parts.append(f"{self.updated} updated")
        parts.append(f"{self.unchanged} already present")
        if self.missing:
            parts.append(f"{self.missing} flagged missing")
        if self.restored:
            parts.append(f"{self.restored} found again")
        text = f"{self.table}: " + ", ".join(parts)
        if self.errors:
            kinds = Counter(_kind(reason) for _, reason in self.errors)
            detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            text += f"; {self.skipped} skipped ({detail}): see {INGEST_ERRORS}"
        if self.unlabeled:
            text += f"; {self.unlabeled} without a label (stored with label NULL)"
        if self.ignored:
            text += f"; {self.ignored} non-image file{'s' if self.ignored != 1 else ''} ignored"
        if self.resplit:
            text += f"; {self.resplit} stored rows moved to the split --split gives them"
        if self.split_kept:
            text += (f"; {self.split_kept} stored rows keep their split although --split gives "
                     "another (it applies to new files; add --resplit to change stored rows)")
        return text + f" [{self.seconds:.1f}s]"


def _kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


@dataclass(slots=True)
class _Stored:
    size: int | None
    mtime_us: int | None
    sha256: str | None
    missing: bool
    split: str | None


@dataclass(slots=True)
class _Read:
    candidate: Candidate
    data: bytes | None = None
    sha256: str | None = None
    info: ImageInfo | None = None
    error: str | None = None


@dataclass
class _Batch:
    """The open transaction: what it holds, booked into the report only once it commits."""

    transaction: AbstractContextManager[None]
    new: int = 0
    changed: int = 0
    unlabeled: int = 0
    rows: int = 0
    bytes: int = 0
    stale: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def _to_us(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return (value - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    return round(float(value) * 1_000_000)


class _Ingest:
    """One run's state: the settings, what is stored, the current batch."""

    def __init__(self, backend: Backend, table: str, *, reference: bool, refresh: bool,
                 max_pixels: int, max_bytes: int, check: str, batch_rows: int,
                 batch_bytes: int, workers: int | None, show_progress: bool | None) -> None:
        self.backend, self.table = backend, table
        self.reference, self.refresh = reference, refresh
        self.max_pixels, self.max_bytes, self.check = max_pixels, max_bytes, check
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes
        # What the reader hands the writer at a time: small enough to overlap, whole batches
        # still commit as one transaction.
        self.chunk_rows, self.chunk_bytes = min(256, batch_rows), min(16 << 20, batch_bytes)
        self.open: _Batch | None = None
        self.workers, self.show_progress = workers, show_progress
        self.report = IngestReport(table)
        self.stored: dict[str, _Stored] = {}
        self.sha_owner: dict[str, str] = {}
        self.error_paths: set[str] = set()
        self.next_id = 1

    # -- setup ----------------------------------------------------------------------------------
    def prepare_table(self) -> None:
        b = self.backend
        if not b.table_exists(self.table):
            b.create_table(self.table, IMAGE_COLUMNS)
        else:
            have = set(b.table_columns(self.table))
            lacking = [c for c in REQUIRED_IMAGE_COLUMNS if c not in have]
            if lacking:
                raise SqlvisionError(
                    f"table {self.table!r} exists but is not an image table (it lacks "
                    f"{', '.join(lacking)})",
                    "ingest into a new table name, or drop the existing table first",
                )
            for col in IMAGE_COLUMNS:
                if col.name not in have:
                    b.add_column(self.table, col)
        ensure_ingest_errors(b)

    def load_state(self) -> None:
        q = self.backend.quote(self.table)
        max_id = self.backend.scalar(f"SELECT max(id) FROM {q}")
        self.next_id = int(max_id or 0) + 1
        sql = f"SELECT uri, size_bytes, last_modified, sha256, missing, split FROM {q}"
        for batch in self.backend.stream(sql, batch_rows=65536):
            cols = [batch.column(i).to_pylist() for i in range(6)]
            for uri, size, mtime, sha, missing, split in zip(*cols, strict=True):
                self.stored[uri] = _Stored(size, _to_us(mtime), sha, bool(missing), split)
                if sha:
                    self.sha_owner.setdefault(sha, uri)
        errors = self.backend.query(
            f"SELECT path FROM {self.backend.quote(INGEST_ERRORS)} WHERE table_name = ?",
            [self.table],
        )
        self.error_paths = set(errors.column(0).to_pylist())

    # -- classify -------------------------------------------------------------------------------
    def changed(self, c: Candidate, s: _Stored) -> bool:
        if c.size is not None and s.size is not None and c.size != s.size:
            return True
        mtime_us = _to_us(c.mtime)
        return mtime_us is not None and s.mtime_us is not None and abs(mtime_us - s.mtime_us) > 1

    # -- per file (worker threads) ------------------------------------------------------------
    def read_chunk(self, chunk: list[Candidate]) -> list[_Read]:
        return [self.read_one(c) for c in chunk]

    def read_one(self, c: Candidate) -> _Read:
        if c.size is not None and c.size > self.max_bytes:
            return _Read(c, error=self.too_big(c.size))
        try:
            data = c.reader.read(c.key)
        except OSError as exc:
            return _Read(c, error=f"cannot read file: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - a filesystem driver's own error costs only this file
            return _Read(c, error=f"cannot read file: {type(exc).__name__}: {exc}")
        if len(data) > self.max_bytes:
            return _Read(c, error=self.too_big(len(data)))
        result = _Read(c, sha256=hashlib.sha256(data).hexdigest())
        if not self.reference and (reason := self.backend.too_large(len(data))):
            result.error = f"too large for this database: {reason}"
            return result
        try:
            result.info = probe(data, self.max_pixels)
            if self.check == "full":
                decode(data, max_pixels=self.max_pixels)
        except ImageError as exc:
            result.error = str(exc.message)
            return result
        result.data = data
        return result

    def too_big(self, size: int) -> str:
        return (f"file too large: {size:,} bytes exceeds the cap of {self.max_bytes:,} "
                "(raise it with --max-bytes if the file is trusted)")

    # -- batches ---------------------------------------------------------------------------------
    def reads(self, todo: list[Candidate]) -> Iterable[list[_Read]]:
        """Read results in order. Local files are read inline: for small files on a local disk
        threads only add GIL contention; remote URIs and IDX encoding use a thread pool."""
        chunks = chunked(todo, 32)
        workers = self.workers
        if workers is None:
            workers = 1 if all(c.reader is LOCAL for c in todo) else default_workers()
        if workers <= 1:
            return map(self.read_chunk, chunks)
        return ordered_map(self.read_chunk, chunks, workers=workers)

    def run(self, todo: list[Candidate], updates: set[str]) -> None:
        """Read on this thread while a writer thread appends what was read to the open batch.

        Chunks of ``chunk_rows`` rows go to the database as soon as they are read (at most two
        in flight, so memory stays bounded), and the batch commits every ``batch_rows`` rows or
        ``batch_bytes`` bytes: the engine stores one chunk while the next is read and hashed.
        """
        rows: list[_Read] = []
        errors: list[tuple[str, str]] = []
        pending_bytes = 0
        bar = progress_bar(len(todo), f"ingest {self.table}", enabled=self.show_progress)
        with BackgroundWriter(depth=2) as writer:
            try:
                for chunk in self.reads(todo):
                    for r in chunk:
                        if r.error is None:
                            r.error = self.duplicate_of(r)
                        if r.error is not None:
                            errors.append((r.candidate.uri, r.error))
                            continue
                        rows.append(r)
                        pending_bytes += len(r.data or b"")
                    bar.update(len(chunk))
                    if len(rows) + len(errors) >= self.chunk_rows or pending_bytes >= self.chunk_bytes:
                        writer.submit(self.write, rows, errors, updates)
                        rows, errors, pending_bytes = [], [], 0
                writer.submit(self.write, rows, errors, updates, commit=True)
                writer.drain()
            except BaseException:
                writer.abort(cleanup=self.rollback)
                raise
            finally:
                bar.close()

    def duplicate_of(self, r: _Read) -> str | None:
        assert r.sha256 is not None
        owner = self.sha_owner.get(r.sha256)
        if owner is not None and owner != r.candidate.uri:
            return f"duplicate content: identical to {display_path(owner)}"
        self.sha_owner[r.sha256] = r.candidate.uri
        return None

    # -- the open batch (writer thread) ----------------------------------------------------------
    def write(self, rows: list[_Read], errors: list[tuple[str, str]], updates: set[str], *,
              commit: bool = False) -> None:
        """Append rows and error records to the open batch (opening one if needed); commit it
        when full, or when ``commit``."""
        if rows or errors:
            if self.open is None:
                self.open = _Batch(self.backend.transaction())
                self.open.transaction.__enter__()
            try:
                self.append(self.open, rows, errors, updates)
            except BaseException:
                self.rollback()
                raise
        batch = self.open
        if batch is not None and (commit or batch.rows >= self.batch_rows
                                  or batch.bytes >= self.batch_bytes):
            self.open = None
            batch.transaction.__exit__(None, None, None)
            # Only after the commit: a failed batch must leave the in-memory state untouched.
            self.next_id += batch.new
            self.error_paths.difference_update(batch.stale)
            self.error_paths.update(p for p, _ in batch.errors)
            self.report.added += batch.new
            self.report.updated += batch.changed
            self.report.errors.extend(batch.errors)
            self.report.unlabeled += batch.unlabeled

    def rollback(self) -> None:
        """Undo the open batch, if any: nothing of it is stored or counted."""
        batch, self.open = self.open, None
        if batch is not None:
            exc = SqlvisionError("ingest stopped", "rerun the same command to complete it")
            batch.transaction.__exit__(SqlvisionError, exc, None)

    def append(self, batch: _Batch, rows: list[_Read], errors: list[tuple[str, str]],
               updates: set[str]) -> None:
        now = utcnow()
        new = [r for r in rows if r.candidate.uri not in updates]
        changed = [r for r in rows if r.candidate.uri in updates]
        first_id = self.next_id + batch.new
        stale = [p for p in (*(r.candidate.uri for r in rows), *(p for p, _ in errors))
                 if p in self.error_paths]
        b = self.backend
        if new:
            b.insert(self.table, self.arrow(new, list(range(first_id, first_id + len(new))), now))
        if changed:
            b.update(self.table, "uri", self.arrow(changed, None, now).drop_columns(["id"]))
        if stale:
            b.executemany(f"DELETE FROM {b.quote(INGEST_ERRORS)} WHERE table_name = ? AND path = ?",
                          [(self.table, p) for p in stale])
        if errors:
            b.insert(INGEST_ERRORS, pa.table(
                [[self.table] * len(errors), [p for p, _ in errors],
                 [reason for _, reason in errors], [now] * len(errors)], schema=_ERROR_SCHEMA))
        batch.new += len(new)
        batch.changed += len(changed)
        batch.stale.extend(stale)
        batch.errors.extend(errors)
        batch.unlabeled += sum(1 for r in rows if not r.candidate.labeled)
        batch.rows += len(rows) + len(errors)
        batch.bytes += sum(len(r.data or b"") for r in rows)

    def arrow(self, rows: list[_Read], ids: list[int] | None, now: dt.datetime) -> pa.Table:
        infos = [r.info for r in rows]
        cands = [r.candidate for r in rows]
        columns = {
            "id": ids if ids is not None else [None] * len(rows),
            "uri": [c.uri for c in cands],
            "data": [None] * len(rows) if self.reference else [r.data for r in rows],
            "label": [c.label for c in cands],
            "split": [c.split for c in cands],
            "width": [i.width if i else None for i in infos],
            "height": [i.height if i else None for i in infos],
            "format": [i.format if i else None for i in infos],
            "mode": [i.mode if i else None for i in infos],
            "size_bytes": [len(r.data or b"") for r in rows],
            "sha256": [r.sha256 for r in rows],
            "last_modified": [_to_us(c.mtime) for c in cands],
            "ingested_at": [now] * len(rows),
            "missing": [False] * len(rows),
        }
        return pa.table([pa.array(columns[f.name], f.type) for f in IMAGE_SCHEMA],
                        schema=IMAGE_SCHEMA)

    def mark_presence(self, seen: Iterable[str], roots: list[str]) -> None:
        """Flag rows under the scanned roots whose file is gone; clear the flag on returners."""
        seen_set = set(seen)
        restored = [u for u in seen_set if u in self.stored and self.stored[u].missing]
        gone = []
        if self.refresh and roots:
            gone = [u for u, s in self.stored.items()
                    if not s.missing and u not in seen_set and u.startswith(tuple(roots))]
        flags = [(u, True) for u in gone] + [(u, False) for u in restored]
        if flags:
            data = pa.table({"uri": [u for u, _ in flags], "missing": [f for _, f in flags]})
            with self.backend.transaction():
                self.backend.update(self.table, "uri", data)
        self.report.missing += len(gone)
        self.report.restored += len(restored)

    def settle_splits(self, unchanged: list[Candidate], resplit: bool) -> None:
        """Stored rows whose split differs from what this run's rule gives: moved with
        ``resplit``, else counted, so the summary can say they were kept."""
        moved = [c for c in unchanged if c.split != self.stored[c.uri].split]
        if not resplit:
            self.report.split_kept = len(moved)
            return
        if moved:
            data = pa.table({"uri": [c.uri for c in moved], "split": [c.split for c in moved]})
            with self.backend.transaction():
                self.backend.update(self.table, "uri", data)
        self.report.resplit = len(moved)


def ingest(backend: Backend, table: str, sources: Iterable[str], *, labels: str | None = None,
           split: str | None = None, seed: int = 0, reference: bool = False,
           refresh: bool = False, resplit: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
           max_bytes: int = DEFAULT_MAX_BYTES, check: str = "header",
           batch_rows: int = 2048, batch_bytes: int = 128 << 20, workers: int | None = None,
           progress: bool | None = None) -> IngestReport:
    """Ingest images from ``sources`` into ``table``; see :meth:`sqlvision.Database.ingest`."""
    started = time.perf_counter()
    sources = [str(s) for s in sources]
    if not sources:
        raise SqlvisionError("no sources given", "name at least one folder, file, glob or URI")
    if check not in ("header", "full"):
        raise SqlvisionError(f"unknown --check value {check!r}", "use header or full")
    label_rule = LabelRule.parse(labels)
    split_rule = SplitRule.parse(split, seed)
    backend.check_name(table)  # before anything is created
    run = _Ingest(backend, table, reference=reference, refresh=refresh, max_pixels=max_pixels,
                  max_bytes=max_bytes, check=check, batch_rows=batch_rows,
                  batch_bytes=batch_bytes, workers=workers,
                  show_progress=progress)
    scan = scan_sources(sources, label_rule, split_rule)
    if reference and any(not c.reader.reference_ok for c in scan.candidates):
        raise SqlvisionError("IDX archives hold many images in one file and cannot be "
                             "referenced by uri", "ingest them without --reference")
    run.prepare_table()
    run.load_state()
    todo, updates, unchanged = [], set(), []
    for c in scan.candidates:
        stored = run.stored.get(c.uri)
        if stored is None and (reason := backend.key_too_long(URI_COLUMN, c.uri)):
            scan.errors.append((c.uri, f"path too long for this database: {reason}"))
        elif stored is None:
            todo.append(c)
        elif refresh and run.changed(c, stored):
            todo.append(c)
            updates.add(c.uri)
            if stored.sha256 and run.sha_owner.get(stored.sha256) == c.uri:
                del run.sha_owner[stored.sha256]
        else:
            unchanged.append(c)
    run.report.unchanged = len(unchanged)
    run.report.ignored = scan.ignored
    run.run(todo, updates)
    if scan.errors:
        run.write([], scan.errors, set(), commit=True)
    run.mark_presence((c.uri for c in scan.candidates), scan.roots)
    run.settle_splits(unchanged, resplit)
    run.report.seconds = time.perf_counter() - started
    return run.report
