"""Table and column names from users: validated, then always quoted, never spliced raw."""

from __future__ import annotations

import re

from sqlvision.errors import SqlvisionError

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL truncates longer names silently; refuse them everywhere
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def split_name(name: str) -> list[str]:
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
        check_identifier(part)
    return parts


def check_identifier(part: str) -> str:
    """Refuse identifiers no engine can hold safely: control characters, over-long names."""
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
    return part


def quote_identifier(part: str, quote_char: str = '"') -> str:
    """Quote one identifier for SQL, doubling any embedded quote character."""
    check_identifier(part)
    return quote_char + part.replace(quote_char, quote_char * 2) + quote_char


def quote_name(name: str, quote_char: str = '"') -> str:
    """Quote a possibly schema-qualified name part by part."""
    return ".".join(quote_identifier(p, quote_char) for p in split_name(name))
