"""Database URLs: parsing, defaults and a password-free form for messages and logs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sqlvision.errors import SqlvisionError

DEFAULT_URL = "duckdb:///sqlvision.duckdb"
ENV_VAR = "SQLVISION_DB"

_SCHEME_ALIASES = {
    "duckdb": "duckdb",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db3")


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL; ``path`` is the file for embedded engines (``:memory:`` for none)."""

    raw: str
    scheme: str
    path: str = ""
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    database: str | None = None
    query: str = ""

    @property
    def redacted(self) -> str:
        """The URL with any password replaced by ``***``: safe to print."""
        if self.password is None:
            return self.raw
        return self.raw.replace(":" + _raw_password(self.raw) + "@", ":***@", 1)


def _raw_password(raw: str) -> str:
    netloc = urlsplit(raw).netloc
    userinfo = netloc.rpartition("@")[0]
    return userinfo.partition(":")[2]


def parse_url(url: str | os.PathLike[str] | None = None) -> DatabaseURL:
    """Parse ``url``; ``None`` means ``$SQLVISION_DB``, else an embedded DuckDB file here.

    Embedded engines follow SQLAlchemy's convention: ``duckdb:///rel.duckdb`` is relative,
    ``duckdb:////abs/path.duckdb`` absolute, ``duckdb://`` or ``duckdb:///:memory:`` in memory.
    A bare file path is accepted too (``.sqlite``/``.sqlite3``/``.db3`` mean SQLite, else DuckDB).
    """
    if url is None:
        url = os.environ.get(ENV_VAR) or DEFAULT_URL
    raw = os.fspath(url)
    if "://" not in raw:
        if not raw:
            raise SqlvisionError("empty database URL", f"use e.g. {DEFAULT_URL}")
        scheme = "sqlite" if raw.lower().endswith(_SQLITE_SUFFIXES) else "duckdb"
        return DatabaseURL(raw=raw, scheme=scheme, path=raw)
    parts = urlsplit(raw)
    found = _SCHEME_ALIASES.get(parts.scheme.lower().split("+")[0])
    if found is None:
        known = ", ".join(sorted({f"{s}://" for s in _SCHEME_ALIASES}))
        raise SqlvisionError(f"unknown database URL scheme {parts.scheme!r} in {raw!r}",
                             f"use one of {known}")
    scheme = found
    if scheme in ("duckdb", "sqlite"):
        path, _, query = raw.split("://", 1)[1].partition("?")
        path = path[1:] if path.startswith("/") else path
        if query and scheme == "sqlite":
            raise SqlvisionError(f"SQLite URLs take no options: {raw!r}", "remove the ?... part")
        return DatabaseURL(raw=raw, scheme=scheme, path=unquote(path) or ":memory:", query=query)
    try:
        port = parts.port
    except ValueError as exc:
        raise SqlvisionError(f"bad port in database URL {raw!r}", "use host:PORT") from exc
    return DatabaseURL(
        raw=raw,
        scheme=scheme,
        host=parts.hostname,
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        database=unquote(parts.path.lstrip("/")) or None,
        query=parts.query,
    )
