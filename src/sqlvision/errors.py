"""Errors that carry a fix: every user-facing failure says what went wrong and what to do."""

from __future__ import annotations

import shlex


class SqlvisionError(Exception):
    """A failure the user can act on; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class MissingDependencyError(SqlvisionError, ImportError):
    """An optional dependency is not installed."""


class ImageError(SqlvisionError):
    """An image could not be read, identified or decoded safely."""


def command(*argv: str) -> str:
    """A ``sqlvision`` command line to suggest in a message, quoted so a shell runs it as is
    (whatever the table name holds)."""
    return shlex.join(["sqlvision", *argv])


def sql_string(value: str) -> str:
    """``value`` as a standard SQL string literal, for SQL shown in a message."""
    return "'" + value.replace("'", "''") + "'"
