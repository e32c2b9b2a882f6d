"""Errors that carry a fix: every user-facing failure says what went wrong and what to do."""

from __future__ import annotations


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
