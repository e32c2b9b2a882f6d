"""Database URLs: parsing, defaults and a password-free form for messages and logs."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

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
#: query parameters that carry a credential (libpq's, PyMySQL's, DuckDB's tokens and kin)
SECRET_PARAMETERS = re.compile(r"pass|pwd|secret|token|key|credential|auth", re.IGNORECASE)


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
    def secrets(self) -> list[str]:
        """Every credential the URL carries (its password, secret query values), raw and
        decoded: the strings no message may show."""
        found = [] if self.password is None else [self.password]
        found += [v for k, v in parse_qsl(self.query, keep_blank_values=True)
                  if SECRET_PARAMETERS.search(k) and v]
        encoded = [f for v in found for f in (quote(v, safe=""), quote(v)) if f in self.raw]
        return sorted({*found, *encoded}, key=len, reverse=True)

    @property
    def redacted(self) -> str:
        """The URL with its password and every secret query value replaced by ``***``: safe to
        print, log or store."""
        return redact_url(self.raw)

    def mask(self, text: str) -> str:
        """``text`` with this URL's credentials replaced by ``***`` (driver messages)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


_QUERY_PARAM = re.compile(r"([?&;])([^=&#;]+)=([^&#;]*)")


def redact_url(raw: str) -> str:
    """``raw`` with the userinfo password and secret query values masked."""
    text = raw
    scheme, sep, rest = raw.partition("://")
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        userinfo, at, host = rest[:end].rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if at and colon:
            text = f"{scheme}://{user}:***@{host}{rest[end:]}"
    return _QUERY_PARAM.sub(
        lambda m: f"{m[1]}{m[2]}=***" if SECRET_PARAMETERS.search(unquote(m[2])) else m[0], text)


_URL_IN_TEXT = re.compile(r"[a-zA-Z][\w+.-]*://\S+")


def redact_text(text: str, url: str | None = None) -> str:
    """``text`` (a message) with every URL in it redacted and the credentials of ``url`` (the
    database URL in use, if any: a driver may quote its password alone) masked."""
    if url:
        with contextlib.suppress(SqlvisionError):
            text = parse_url(url).mask(text)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), text)


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
