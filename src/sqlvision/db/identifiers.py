"""Table and column names from users: validated, then always quoted, never spliced raw."""

from __future__ import annotations

import hashlib
import re

from sqlvision.errors import SqlvisionError

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL truncates longer names silently; refuse them everywhere
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def split_name(name: str, max_bytes: int | None = None) -> list[str]:
    """Split ``schema.table`` into parts and check each; raises with the fix on a bad name."""
    if not isinstance(name, str) or not name.strip():
        raise SqlvisionError("empty table or column name", "give a name such as photos")
    parts = name.split(".")
    if len(parts) > 3 or any(not p for p in parts):
        raise SqlvisionError(
            f"bad name {name!r}: expected NAME, SCHEMA.NAME or CATALOG.SCHEMA.NAME",
            "remove the extra dots",
        )
    for part in parts:
        check_identifier(part, max_bytes)
    return parts


def check_identifier(part: str, max_bytes: int | None = None) -> str:
    """Refuse identifiers no engine can hold safely: control characters, over-long names
    (``max_bytes``: the engine's limit in UTF-8 bytes, where it counts bytes; names over it
    would be cut silently, so two long names could become one)."""
    if _CONTROL.search(part):
        raise SqlvisionError(
            f"bad name {part!r}: control characters are not allowed in names",
            "use letters, digits and underscores",
        )
    if len(part) > MAX_IDENTIFIER_LENGTH:
        raise SqlvisionError(
            f"name {part[:20]!r}... is {len(part)} characters long",
            f"use at most {MAX_IDENTIFIER_LENGTH}",
        )
    if max_bytes is not None and len(part.encode()) > max_bytes:
        raise SqlvisionError(
            f"name {part!r} is {len(part.encode())} bytes long in UTF-8; this database cuts "
            f"names at {max_bytes} bytes", "use a shorter name (non-ASCII letters take 2-4 "
            "bytes each)")
    return part


def derived_name(*parts: str, max_bytes: int = MAX_IDENTIFIER_LENGTH) -> str:
    """A name sqlvision makes from others (an index): ``parts`` joined by ``_``, shortened
    with a hash of the whole when it would be too long, so distinct inputs stay distinct."""
    name = "_".join(parts)
    if len(name.encode()) <= max_bytes:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    head = name.encode()[:max_bytes - 11].decode(errors="ignore")
    return f"{head}_{digest}"


def quote_identifier(part: str, quote_char: str = '"', max_bytes: int | None = None) -> str:
    """Quote one identifier for SQL, doubling any embedded quote character."""
    check_identifier(part, max_bytes)
    return quote_char + part.replace(quote_char, quote_char * 2) + quote_char


def quote_name(name: str, quote_char: str = '"', max_bytes: int | None = None) -> str:
    """Quote a possibly schema-qualified name part by part."""
    return ".".join(quote_identifier(p, quote_char) for p in split_name(name, max_bytes))
