"""Embedded DuckDB: the default engine. Bulk data moves through Arrow without Python rows."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import duckdb
import pyarrow as pa

from sqlvision.db.base import Column, InformationSchemaBackend
from sqlvision.db.functions import SqlFunction, sql_literal
from sqlvision.db.identifiers import quote_identifier, split_name
from sqlvision.db.url import DatabaseURL
from sqlvision.errors import SqlvisionError

_view_ids = itertools.count()
_PARAM_TYPES = {"text": "VARCHAR", "blob": "BLOB", "int": "INTEGER", "double": "DOUBLE"}


def _with_arity(func: Any, n: int) -> Any:
    """``func(*args)`` declaring ``n`` positional parameters (DuckDB counts them)."""
    def call(*args: Any) -> Any:
        return func(*args)

    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(n)])
    return call


def duckdb_type(arrow_type: pa.DataType) -> str:
    """DuckDB's name for an Arrow type (the ones SQL functions return)."""
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(f"{quote_identifier(f.name)} {duckdb_type(f.type)}" for f in arrow_type)
        return f"STRUCT({fields})"
    if pa.types.is_list(arrow_type):
        return f"{duckdb_type(arrow_type.value_type)}[]"
    names = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.float32(): "FLOAT",
             pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.bool_(): "BOOLEAN"}
    return names[arrow_type]
ROW_GROUP_ROWS = 2048


def _to_arrow(relation: Any) -> pa.Table:
    if relation is None:
        return pa.table({})
    if hasattr(relation, "to_arrow_table"):
        return relation.to_arrow_table()
    return relation.fetch_arrow_table()  # duckdb < 1.4


def _attach(con: duckdb.DuckDBPyConnection, path: str, alias: str, read_only: bool) -> None:
    """Attach the database file ``path`` as ``alias`` (read-only: beside other readers)."""
    target = "'" + path.replace("'", "''") + "'"

    def statement(*options: str) -> str:
        listed = [*(["READ_ONLY"] if read_only else []), *options]
        return (f"ATTACH {target} AS {quote_identifier(alias)}"
                + (f" ({', '.join(listed)})" if listed else ""))

    try:
        con.execute(statement(f"ROW_GROUP_SIZE {ROW_GROUP_ROWS}"))
    except (duckdb.NotImplementedException, duckdb.ParserException, duckdb.BinderException):
        con.execute(statement())  # DuckDB < 1.2 has no ROW_GROUP_SIZE option


class DuckDBBackend(InformationSchemaBackend):
    """A DuckDB database file (or ``:memory:``)."""

    dialect = "duckdb"
    sqlglot_dialect = "duckdb"
    current_schema_sql = "table_schema = current_schema() AND table_catalog = current_database()"
    type_names: ClassVar[dict[str, str]] = {
        "bigint": "BIGINT",
        "int": "INTEGER",
        "double": "DOUBLE",
        "bool": "BOOLEAN",
        "text": "VARCHAR",
        "key": "VARCHAR",
        "blob": "BLOB",
        "timestamp": "TIMESTAMP",
        "json": "JSON",
        "vector": "FLOAT[]",
    }

    readers_block_writes = True
    #: how long taking a lent file back waits for its readers to close it
    TAKE_BACK_SECONDS = 30.0

    def __init__(self, url: DatabaseURL, read_only: bool = False) -> None:
        super().__init__(url)
        self.read_only = read_only
        self._lent = False
        try:
            self.con, self.catalog = self._open(url.path, dict(parse_qsl(url.query)), read_only)
        except duckdb.IOException as exc:
            raise SqlvisionError(
                f"cannot open DuckDB database {url.path!r}: {exc}",
                "close the other process using it, or use another --db file",
            ) from exc
        except duckdb.InvalidInputException as exc:
            raise SqlvisionError(f"bad DuckDB option in {url.redacted!r}: {exc}",
                                 "use DuckDB settings, e.g. ?memory_limit=2GB&threads=4") from exc

    @staticmethod
    def _open(path: str, config: dict[str, Any],
              read_only: bool = False) -> tuple[duckdb.DuckDBPyConnection, str | None]:
        """Open ``path`` with DuckDB settings ``config`` (the URL's ``?memory_limit=2GB&...``),
        and row groups of 2,048 rows (one vector) instead of 122,880.

        DuckDB writes a committed batch straight to the database file, skipping the WAL, only
        once the batch fills a row group; with image-sized rows a default row group is
        gigabytes, so every batch would be written twice. Small row groups halve the cost of
        storing image bytes. The catalog keeps the file's stem as its name, as a plain
        ``duckdb.connect(path)`` would, and so does the spill folder (``PATH.tmp``).
        """
        if path == ":memory:":
            return duckdb.connect(config=config), None
        # Spill files beside the database, as DuckDB does for a file it opens itself (the
        # in-memory instance this attaches to would spill into ./.tmp of whatever folder).
        con = duckdb.connect(config={"temp_directory": f"{path}.tmp", **config})
        stem = os.path.splitext(os.path.basename(path))[0] or "db"
        alias = stem if stem.lower() not in ("memory", "system", "temp") else f"{stem}_db"
        _attach(con, path, alias, read_only)
        con.execute(f"USE {quote_identifier(alias)}")
        return con, alias

    @contextlib.contextmanager
    def lend_file(self) -> Iterator[None]:
        """Detach the file (checkpointed first) so that other processes can open it; this
        connection keeps its SQL functions, and its tables come back with the file."""
        if self.catalog is None or self._lent:
            yield
            return
        self._release()
        self._lent = True
        try:
            yield
        finally:
            self._lent = False
            self._reclaim()

    @contextlib.contextmanager
    def take_file_back(self) -> Iterator[None]:
        if not self._lent:
            yield
            return
        self._reclaim()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        alias = quote_identifier(self.catalog or "")
        if not self.read_only:
            self.con.execute(f"CHECKPOINT {alias}")
        self.con.execute("USE memory")
        self.con.execute(f"DETACH {alias}")

    def _reclaim(self) -> None:
        """Attach the file again, waiting (a while) for other processes to close it."""
        deadline = time.monotonic() + self.TAKE_BACK_SECONDS
        while True:
            try:
                _attach(self.con, self.url.path, self.catalog or "", self.read_only)
                break
            except duckdb.IOException as exc:
                if time.monotonic() > deadline:
                    raise SqlvisionError(f"cannot open DuckDB database {self.url.path!r} again: "
                                         f"{exc}", "close the other process using it") from exc
                time.sleep(0.02)
        self.con.execute(f"USE {quote_identifier(self.catalog or '')}")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A second connection to the same database (for reading while ``self`` writes)."""
        cursor = self.con.cursor()
        if self.catalog is not None:
            cursor.execute(f"USE {quote_identifier(self.catalog)}")
        return cursor

    def column_type(self, column: Column) -> str:
        # Image and model bytes are already compressed: trying to compress them again costs
        # about 40% of the time it takes to store them, for nothing.
        if column.type == "blob":
            return "BLOB USING COMPRESSION uncompressed"
        return self.type_names[column.type]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, list(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.con.executemany(sql, [list(r) for r in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        return _to_arrow(self.con.sql(sql, params=list(params) or None))

    def stream(
        self, sql: str, params: Sequence[Any] = (), batch_rows: int = 1024
    ) -> Iterator[pa.RecordBatch]:
        # A cursor is a second connection to the same database, so the caller may write
        # through ``self`` while this result is being read.
        cursor = self.cursor()
        try:
            relation = cursor.sql(sql, params=list(params) or None)
            if relation is None:
                return
            reader = (
                relation.to_arrow_reader(batch_rows)
                if hasattr(relation, "to_arrow_reader")
                else relation.fetch_record_batch(batch_rows)
            )
            yield from reader
        finally:
            cursor.close()

    def _begin(self) -> None:
        self.con.begin()

    def _commit(self) -> None:
        self.con.commit()

    def _rollback(self) -> None:
        self.con.rollback()

    def schema_exists(self, parts: Sequence[str]) -> bool:
        catalog = parts[0] if len(parts) == 2 else None
        return bool(self.scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ? AND "
            "catalog_name = coalesce(?, current_database())", [parts[-1], catalog]))

    def _where_name(self, name: str) -> tuple[str, list[Any]]:
        parts = split_name(name)
        table = parts[-1]
        if len(parts) == 1:
            return f"table_name = ? AND {self.current_schema_sql}", [table]
        here = "table_catalog = current_database()"
        if len(parts) == 2:
            return f"table_name = ? AND table_schema = ? AND {here}", [table, parts[0]]
        return "table_name = ? AND table_schema = ? AND table_catalog = ?", [table, parts[1],
                                                                               parts[0]]

    def _with_view(self, data: pa.Table, sql_template: str) -> None:
        view = f"sv_batch_{next(_view_ids)}"
        self.con.register(view, data)
        try:
            self.con.execute(sql_template.format(view=self.quote_column(view)))
        finally:
            self.con.unregister(view)

    def insert(self, table: str, data: pa.Table) -> None:
        if not data.num_rows:
            return
        cols = ", ".join(self.quote_column(c) for c in data.column_names)
        self._with_view(data, f"INSERT INTO {self.quote(table)} ({cols}) SELECT {cols} FROM {{view}}")

    def update(self, table: str, key: str, data: pa.Table) -> None:
        if not data.num_rows:
            return
        k = self.quote_column(key)
        sets = ", ".join(
            f"{self.quote_column(c)} = v.{self.quote_column(c)}"
            for c in data.column_names
            if c != key
        )
        self._with_view(
            data, f"UPDATE {self.quote(table)} AS t SET {sets} FROM {{view}} AS v WHERE t.{k} = v.{k}"
        )

    # -- SQL functions ------------------------------------------------------------------------------
    sql_functions = True
    vectorized_functions = True
    native_lists = True

    def install_functions(self, functions: Sequence[SqlFunction]) -> None:
        """Each function as a vectorized Arrow UDF ``sv_NAME`` plus a macro ``NAME`` that casts
        its arguments and fills in the defaults."""
        for function in functions:
            inner = f"sv_{function.name}"
            with contextlib.suppress(duckdb.InvalidInputException, duckdb.CatalogException):
                self.con.remove_function(inner)
            # special: a NULL out for a row whose arguments are not NULL is allowed
            options: dict[str, Any] = {"type": "arrow", "side_effects": False,
                                       "null_handling": "special"}
            self.con.create_function(inner, _with_arity(function.call_arrow, len(function.params)),
                                     [_PARAM_TYPES[kind] for _, kind in function.params],
                                     duckdb_type(function.returns), **options)
            overloads = []
            for arity in function.arities:
                names = [name for name, _ in function.params[:arity]]
                args = [f"{name}::{_PARAM_TYPES[kind]}" for name, kind in function.params[:arity]]
                args += [sql_literal(v) for v in function.full_arguments([0] * arity)[arity:]]
                overloads.append(f"({', '.join(names)}) AS {inner}({', '.join(args)})")
            self.con.execute(f"CREATE OR REPLACE TEMP MACRO {quote_identifier(function.name)}"
                             + ", ".join(overloads))

    def close(self) -> None:
        self.con.close()
