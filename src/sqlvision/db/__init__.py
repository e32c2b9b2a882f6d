"""Backends: one per engine, picked from the URL scheme through a small registry."""

from __future__ import annotations

from collections.abc import Callable

from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.db.url import DatabaseURL, parse_url
from sqlvision.errors import MissingDependencyError, SqlvisionError

BackendFactory = Callable[[DatabaseURL], Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Make ``scheme://`` URLs open with ``factory``."""
    _BACKENDS[scheme] = factory


def list_backends() -> list[str]:
    """URL schemes that have a backend."""
    return sorted(_BACKENDS)


def open_backend(url: str | DatabaseURL | None = None) -> Backend:
    """Open the backend for ``url`` (see :func:`parse_url` for the defaults)."""
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    factory = _BACKENDS.get(parsed.scheme)
    if factory is None:
        raise SqlvisionError(
            f"no backend is available for {parsed.scheme}:// URLs ({parsed.redacted})",
            f"use one of: {', '.join(s + '://' for s in list_backends())}",
        )
    return factory(parsed)


def _duckdb(url: DatabaseURL) -> Backend:
    from sqlvision.db.duckdb_backend import DuckDBBackend

    return DuckDBBackend(url)


def _sqlite(url: DatabaseURL) -> Backend:
    from sqlvision.db.sqlite_backend import SQLiteBackend

    return SQLiteBackend(url)


def _postgresql(url: DatabaseURL) -> Backend:
    try:
        from sqlvision.db.postgres_backend import PostgresBackend
    except ImportError as exc:
        raise MissingDependencyError(f"PostgreSQL needs psycopg ({exc})",
                                     'pip install "sqlvision[postgres]"') from None
    return PostgresBackend(url)


def _mysql(url: DatabaseURL) -> Backend:
    try:
        from sqlvision.db.mysql_backend import MySQLBackend
    except ImportError as exc:
        raise MissingDependencyError(f"MariaDB and MySQL need PyMySQL ({exc})",
                                     'pip install "sqlvision[mysql]"') from None
    return MySQLBackend(url)


register_backend("duckdb", _duckdb)
register_backend("sqlite", _sqlite)
register_backend("postgresql", _postgresql)
register_backend("mysql", _mysql)

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
