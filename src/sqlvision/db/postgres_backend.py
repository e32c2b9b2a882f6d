"""PostgreSQL through psycopg 3: binary COPY for bulk writes, named cursors for streamed reads.

URL: ``postgresql://user:password@host:port/database?schema=NAME`` (without a host, the
local socket). ``schema`` sets the search path, creating the schema if needed; other query
parameters go to libpq as they are (``sslmode``, ``connect_timeout``, ...).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import numpy as np
import psycopg
import pyarrow as pa
from psycopg.types.json import Jsonb, set_json_loads

from sqlvision.db.base import Column
from sqlvision.db.identifiers import quote_identifier, split_name
from sqlvision.db.server import ServerBackend
from sqlvision.db.url import DatabaseURL
from sqlvision.errors import SqlvisionError

_names = itertools.count()
_JSON_OIDS = {114, 3802}  # json, jsonb
_BTREE_MAX_BYTES = 2704


def _json_text(data: bytes | str) -> str:
    """JSON columns come back as their text, as DuckDB and SQLite return them."""
    return data.decode() if isinstance(data, bytes | bytearray | memoryview) else data


def _as_is(text: Any) -> str:
    return str(text)


class PostgresBackend(ServerBackend):
    """A PostgreSQL database (one schema of it with ``?schema=``)."""

    dialect = "postgresql"
    sqlglot_dialect = "postgres"
    connection_errors = (psycopg.OperationalError, psycopg.InterfaceError)
    integrity_errors = (psycopg.IntegrityError,)
    max_identifier_bytes = 63  # NAMEDATALEN - 1: longer names are cut without an error
    type_names: ClassVar[dict[str, str]] = {
        "bigint": "BIGINT",
        "int": "INTEGER",
        "double": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "text": "TEXT",
        "key": "TEXT",
        "blob": "BYTEA",
        "timestamp": "TIMESTAMP",
        "json": "JSONB",
        "vector": "REAL[]",
    }

    def __init__(self, url: DatabaseURL) -> None:
        options = dict(parse_qsl(url.query))
        self.schema = options.pop("schema", None)
        self._libpq_options = options
        self._oids: dict[str, dict[str, int]] = {}
        self._pgvector: bool | None = None
        super().__init__(url)

    def _connect(self) -> Any:
        u = self.url
        params: dict[str, Any] = {"connect_timeout": 10, "application_name": "sqlvision"}
        params.update({k: v for k, v in {"host": u.host, "port": u.port, "user": u.user,
                                          "password": u.password, "dbname": u.database}.items()
                       if v is not None})
        params.update(self._libpq_options)
        try:
            con = psycopg.connect(autocommit=True, **params)
        except psycopg.ProgrammingError as exc:  # libpq refused an option of the URL
            raise SqlvisionError(f"bad connection option in {u.redacted}: {self.clean(exc)}",
                                 "use libpq's option names (sslmode, connect_timeout, ...) "
                                 "and ?schema=NAME") from exc
        set_json_loads(_json_text, con)
        if self.schema:
            schema = quote_identifier(self.schema)
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(f"SET search_path TO {schema}, public")
        return con

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, psycopg.InterfaceError) or self.con.closed:
            return True
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")

    def is_duplicate_key(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == "23505"

    def _server_side(self, reader: Any, sql: str, args: Sequence[Any] | None,
                     batch_rows: int) -> Iterator[tuple[Any, list[Any]]]:
        with reader.transaction(), reader.cursor(name=f"sv_stream_{next(_names)}") as cur:
            cur.execute(sql, args)
            while rows := cur.fetchmany(batch_rows):
                yield cur.description, rows

    # -- names -------------------------------------------------------------------------------------
    def quote(self, name: str) -> str:
        """With ``?schema=``, an unqualified name means that schema's table and nothing else:
        the search path still lists ``public`` (for pgvector's type), so a name left to it
        would reach another schema's table of the same name."""
        quoted = super().quote(name)
        if self.schema and len(split_name(name)) == 1:
            return f"{quote_identifier(self.schema)}.{quoted}"
        return quoted

    def quote_literal(self, value: str) -> str:
        # An escape string (E'...') reads backslashes the same way whatever
        # standard_conforming_strings says; a plain '...' would not.
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"

    def key_too_long(self, column: Column, value: str) -> str | None:
        # A B-tree entry holds at most about a third of an 8 kB page.
        if column.type != "key" or len(value.encode()) <= _BTREE_MAX_BYTES:
            return None
        return (f"{column.name} is {len(value.encode()):,} bytes long; PostgreSQL indexes at "
                f"most {_BTREE_MAX_BYTES:,}")

    def schema_exists(self, parts: Sequence[str]) -> bool:
        if len(parts) == 2 and parts[0] != self.scalar("SELECT current_database()"):
            return False
        return bool(self.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = ?", [parts[-1]]))

    def temporary_name(self, name: str) -> str:
        return f"pg_temp.{name}"

    # -- tables ------------------------------------------------------------------------------------
    def table_exists(self, name: str) -> bool:
        return bool(self.scalar("SELECT to_regclass(?) IS NOT NULL", [self.quote(name)]))

    def table_columns(self, name: str) -> list[str]:
        return list(self._column_oids(name))

    def _column_oids(self, name: str) -> dict[str, int]:
        rows = self.query("SELECT attname, atttypid::bigint FROM pg_attribute WHERE attrelid = "
                          "to_regclass(?) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                          [self.quote(name)])
        return dict(zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(), strict=True))

    def list_tables(self) -> list[str]:
        rows = self.query("SELECT table_name FROM information_schema.tables "
                          "WHERE table_schema = current_schema() ORDER BY table_name")
        return rows.column(0).to_pylist()

    def create_table(self, name: str, columns: Sequence[Column],
                     primary_key: Sequence[str] = ()) -> None:
        existed = self.table_exists(name)
        super().create_table(name, columns, primary_key)
        if not existed:
            # Image bytes are already compressed: store them out of line without trying again.
            for col in columns:
                if col.type == "blob":
                    self.execute(f"ALTER TABLE {self.quote(name)} ALTER COLUMN "
                                 f"{self.quote_column(col.name)} SET STORAGE EXTERNAL")
        self._oids.pop(name, None)

    def add_column(self, table: str, column: Column) -> None:
        super().add_column(table, column)
        self._oids.pop(table, None)

    def drop_table(self, name: str) -> None:
        super().drop_table(name)
        self._oids.pop(name, None)

    # -- bulk data ------------------------------------------------------------------------------------
    def insert(self, table: str, data: pa.Table) -> None:
        """Binary COPY: rows stream to the server in its own format, no SQL text per row."""
        if not data.num_rows:
            return
        oids = self._oids.get(table)
        if oids is None or any(c not in oids for c in data.column_names):
            oids = self._oids[table] = self._column_oids(table)
        types = [oids[c] for c in data.column_names]
        json_at = [i for i, oid in enumerate(types) if oid in _JSON_OIDS]
        cols = ", ".join(self.quote_column(c) for c in data.column_names)
        with self.guard(), self.con.cursor() as cur, cur.copy(
                f"COPY {self.quote(table)} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for values in self._rows(data):
                row = list(values)
                for i in json_at:
                    if row[i] is not None:
                        row[i] = Jsonb(row[i], dumps=_as_is)
                copy.write_row(row)

    # -- vectors ----------------------------------------------------------------------------------------
    @property
    def has_pgvector(self) -> bool:
        """Whether pgvector is enabled here (enabled on first use when installed and allowed)."""
        if self._pgvector is None:
            enabled = self.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
            if not enabled and self.scalar(
                    "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"):
                try:
                    self.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    enabled = 1
                except psycopg.Error:
                    enabled = 0
            self._pgvector = bool(enabled)
        return self._pgvector

    def nearest(self, table: str, filters: dict[str, Any], query: np.ndarray,
                k: int) -> tuple[list[Any], list[float]] | None:
        """Exact cosine top-k by pgvector's ``<=>`` operator, where the extension is enabled."""
        if not self.has_pgvector:
            return None
        literal = "[" + ",".join(f"{float(x):.9g}" for x in query) + "]"
        where = " AND ".join(f"{self.quote_column(c)} = ?" for c in filters) or "TRUE"
        rows = self.query(
            "SELECT image_id, 1 - (embedding::vector <=> ?::vector) AS similarity "
            f"FROM {self.quote(table)} WHERE {where} ORDER BY embedding::vector <=> ?::vector "
            "LIMIT ?", [literal, *filters.values(), literal, k])
        return rows.column(0).to_pylist(), [float(s) for s in rows.column(1).to_pylist()]

    def json_top_k(self, expression: str, k: int, min_prob: float) -> str:
        path = f"$[0 to {int(k) - 1}] ? (@.probability >= {float(min_prob)!r})"
        return f"jsonb_path_query_array(({expression})::jsonb, {self.quote_literal(path)})"
