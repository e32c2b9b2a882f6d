"""The tables sqlvision creates: the image table layout and the ``sv_`` catalog tables."""

from __future__ import annotations

import datetime as dt

from sqlvision.db.base import Backend, Column

IMAGE_COLUMNS = (
    Column("id", "bigint", primary_key=True),
    Column("uri", "key", unique=True, not_null=True, max_chars=768),
    Column("data", "blob"),
    Column("label", "text"),
    Column("split", "text"),
    Column("width", "int"),
    Column("height", "int"),
    Column("format", "text"),
    Column("mode", "text"),
    Column("size_bytes", "bigint"),
    Column("sha256", "key"),
    Column("last_modified", "timestamp"),
    Column("ingested_at", "timestamp"),
    Column("missing", "bool"),
)
REQUIRED_IMAGE_COLUMNS = ("id", "uri", "data", "label", "split", "sha256")

INGEST_ERRORS = "sv_ingest_errors"
INGEST_ERROR_COLUMNS = (
    Column("table_name", "key", not_null=True),
    Column("path", "text", not_null=True),  # any path, even one too long to be a uri here
    Column("reason", "text"),
    Column("error_at", "timestamp"),
)


def utcnow() -> dt.datetime:
    """Now, as a naive UTC timestamp (how every sqlvision timestamp is stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def as_datetime(value: object) -> dt.datetime | None:
    """A timestamp read back from any engine (SQLite returns ISO text)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def ensure_ingest_errors(backend: Backend) -> None:
    """Create ``sv_ingest_errors`` and its lookup index if needed."""
    if not backend.table_exists(INGEST_ERRORS):
        backend.create_table(INGEST_ERRORS, INGEST_ERROR_COLUMNS)
        backend.create_index(INGEST_ERRORS, ["table_name"])
