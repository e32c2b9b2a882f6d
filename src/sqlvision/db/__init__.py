"""Backends: one per engine, picked from the URL scheme through a small registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.db.url import DatabaseURL, parse_url
from sqlvision.errors import MissingDependencyError, SqlvisionError

BackendFactory = Callable[..., Backend]  # (url, **options) -> Backend
_BACKENDS: dict[str, BackendFactory] = {}
_FILE_SCHEMES = ("duckdb", "sqlite")  # engines that open a file of this machine


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Make ``scheme://`` URLs open with ``factory``."""
    _BACKENDS[scheme] = factory


def list_backends() -> list[str]:
    """URL schemes that have a backend."""
    return sorted(_BACKENDS)


def open_backend(url: str | DatabaseURL | None = None, *, read_only: bool = False) -> Backend:
    """Open the backend for ``url`` (see :func:`parse_url` for the defaults).

    ``read_only``: open a database file only to read it, beside the process that writes it
    (embedded engines; see :meth:`Backend.reader_url`)."""
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    factory = _BACKENDS.get(parsed.scheme)
    if factory is None:
        raise SqlvisionError(
            f"no backend is available for {parsed.scheme}:// URLs ({parsed.redacted})",
            f"use one of: {', '.join(s + '://' for s in list_backends())}",
        )
    if not read_only:
        return factory(parsed)
    if parsed.scheme not in _FILE_SCHEMES:
        raise SqlvisionError(f"{parsed.scheme}:// databases are not opened read-only by sqlvision",
                             "open them with a read-only user instead")
    return factory(parsed, read_only=True)


def _lazy(module: str, cls: str, needs: str | None = None, extra: str | None = None
          ) -> BackendFactory:
    """A factory that imports the backend's module on first use (so ``import sqlvision`` loads
    no driver), naming the extra to install when the driver is missing."""
    def factory(url: DatabaseURL, **options: Any) -> Backend:
        try:
            backend_class = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            if needs is None:
                raise
            raise MissingDependencyError(f"{needs} ({exc})", f'pip install "sqlvision[{extra}]"'
                                         ) from None
        return backend_class(url, **options)

    return factory


register_backend("duckdb", _lazy("sqlvision.db.duckdb_backend", "DuckDBBackend"))
register_backend("sqlite", _lazy("sqlvision.db.sqlite_backend", "SQLiteBackend"))
register_backend("postgresql", _lazy("sqlvision.db.postgres_backend", "PostgresBackend",
                                     "PostgreSQL needs psycopg", "postgres"))
register_backend("mysql", _lazy("sqlvision.db.mysql_backend", "MySQLBackend",
                                "MariaDB and MySQL need PyMySQL", "mysql"))

__all__ = [
    "Backend",
    "Column",
    "DatabaseURL",
    "arrow_schema",
    "list_backends",
    "open_backend",
    "parse_url",
    "register_backend",
]
