"""Backends: one per engine, picked from the URL scheme through a small registry."""

from __future__ import annotations

import importlib
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


def _lazy(module: str, cls: str, needs: str | None = None, extra: str | None = None
          ) -> BackendFactory:
    """A factory that imports the backend's module on first use (so ``import sqlvision`` loads
    no driver), naming the extra to install when the driver is missing."""
    def factory(url: DatabaseURL) -> Backend:
        try:
            backend_class = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            if needs is None:
                raise
            raise MissingDependencyError(f"{needs} ({exc})", f'pip install "sqlvision[{extra}]"'
                                         ) from None
        return backend_class(url)

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
