"""SQLite through the standard library: a single-file database with no extra dependency."""

from __future__ import annotations

import datetime as dt
import pathlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pyarrow as pa

from sqlvision.db.base import Backend, rows_to_arrow, vector_bytes
from sqlvision.db.functions import SqlFunction
from sqlvision.db.identifiers import split_name
from sqlvision.db.url import DatabaseURL
from sqlvision.errors import SqlvisionError


def _adapt(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return vector_bytes(value)


class SQLiteBackend(Backend):
    """A SQLite database file (or ``:memory:``)."""

    dialect = "sqlite"
    sqlglot_dialect = "sqlite"
    type_names: ClassVar[dict[str, str]] = {
        "bigint": "INTEGER",
        "int": "INTEGER",
        "double": "REAL",
        "bool": "BOOLEAN",
        "text": "TEXT",
        "key": "TEXT",
        "blob": "BLOB",
        "timestamp": "TIMESTAMP",
        "json": "TEXT",
        "vector": "BLOB",
    }

    def __init__(self, url: DatabaseURL, read_only: bool = False) -> None:
        super().__init__(url)
        try:
            if read_only:  # a reader beside the writer: the WAL lets both run at once
                target = pathlib.Path(url.path).resolve().as_uri() + "?mode=ro"
                self.con = sqlite3.connect(target, uri=True, isolation_level=None,
                                           check_same_thread=False)
            else:
                self.con = sqlite3.connect(url.path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise SqlvisionError(
                f"cannot open SQLite database {url.path!r}: {exc}",
                "check that the folder exists and is writable",
            ) from exc
        self._functions: set[str] = set()
        if not read_only:
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")


    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, [_adapt(p) for p in params])

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.con.executemany(sql, ([_adapt(v) for v in row] for row in rows))

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        cur = self.con.execute(sql, [_adapt(p) for p in params])
        try:
            return rows_to_arrow(cur.description, cur.fetchall())
        finally:
            cur.close()

    def stream(
        self, sql: str, params: Sequence[Any] = (), batch_rows: int = 1024
    ) -> Iterator[pa.RecordBatch]:
        cur = self.con.cursor()
        try:
            cur.execute(sql, [_adapt(p) for p in params])
            while rows := cur.fetchmany(batch_rows):
                yield from rows_to_arrow(cur.description, rows).to_batches()
        finally:
            cur.close()

    def _begin(self) -> None:
        self.con.execute("BEGIN")

    def _commit(self) -> None:
        self.con.execute("COMMIT")

    def _rollback(self) -> None:
        if self.con.in_transaction:
            self.con.execute("ROLLBACK")

    def _master(self, name: str) -> tuple[str, str]:
        parts = split_name(name)
        if len(parts) > 2:
            raise SqlvisionError(f"bad SQLite name {name!r}", "use NAME or SCHEMA.NAME")
        schema = self.quote_column(parts[0]) + "." if len(parts) == 2 else ""
        return f"{schema}sqlite_master", parts[-1]

    def byte_length(self, expression: str) -> str:
        return f"length({expression})"  # bytes for a BLOB (octet_length needs SQLite 3.43)

    def schema_exists(self, parts: Sequence[str]) -> bool:
        return len(parts) == 1 and bool(self.scalar(
            "SELECT count(*) FROM pragma_database_list WHERE name = ?", [parts[0]]))

    def table_exists(self, name: str) -> bool:
        parts = split_name(name)
        if len(parts) == 2 and not self.schema_exists(parts[:1]):
            return False
        master, table = self._master(name)
        return bool(self.scalar(
            f"SELECT count(*) FROM {master} WHERE type IN ('table', 'view') AND name = ?", [table]
        ))

    def table_columns(self, name: str) -> list[str]:
        cur = self.con.execute(f"SELECT * FROM {self.quote(name)} LIMIT 0")
        try:
            return [d[0] for d in cur.description]
        finally:
            cur.close()

    def list_tables(self) -> list[str]:
        rows = self.query(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        return rows.column(0).to_pylist()

    # -- SQL functions ------------------------------------------------------------------------------
    sql_functions = True

    def install_functions(self, functions: Sequence[SqlFunction]) -> None:
        """Each function as a row function per argument count; nested values as JSON text."""
        for function in functions:
            for arity in function.arities:
                self.con.create_function(function.name, arity, function.call_row)
            self._functions.add(function.name)

    def adapt_query(self, sql: str) -> str:
        """Struct fields and UNNEST of the installed functions' values, in JSON functions."""
        if not self._functions:
            return sql
        from sqlvision.db.sqlite_rewrite import rewrite_for_sqlite

        return rewrite_for_sqlite(sql, self._functions)

    def json_top_k(self, expression: str, k: int, min_prob: float) -> str:
        return (f"(SELECT json_group_array(json(e.value)) FROM json_each({expression}) AS e "
                f"WHERE e.key < {int(k)} AND json_extract(e.value, '$.probability') >= "
                f"{float(min_prob)!r})")

    def field(self, expression: str, name: str) -> str:
        return f"json_extract({expression}, {self.quote_literal('$.' + name)})"

    def close(self) -> None:
        self.con.close()
