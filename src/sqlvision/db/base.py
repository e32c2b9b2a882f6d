"""The backend interface: the few operations every engine provides, with fast paths per engine.

Internal SQL is written with ``?`` placeholders and double-quoted identifiers produced by
:meth:`Backend.quote`; a backend whose driver wants another style translates in ``_prepare``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from sqlvision.db.functions import SqlFunction
from sqlvision.db.identifiers import derived_name, quote_identifier, quote_name, split_name
from sqlvision.db.url import DatabaseURL
from sqlvision.errors import SqlvisionError

LOGICAL_TYPES = ("bigint", "int", "double", "bool", "text", "key", "blob", "timestamp", "json",
                 "vector")


@dataclass(frozen=True)
class Column:
    """A column of a table sqlvision creates; ``type`` is one of :data:`LOGICAL_TYPES`.

    ``key`` is text that takes part in an index (engines that cannot index TEXT get a VARCHAR
    of ``max_chars``, 255 unless set).
    """

    name: str
    type: str
    primary_key: bool = False
    unique: bool = False
    not_null: bool = False
    max_chars: int | None = None

    def __post_init__(self) -> None:
        if self.type not in LOGICAL_TYPES:
            raise ValueError(f"unknown logical type {self.type!r}")


ARROW_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "key": pa.string(),
    "blob": pa.binary(),
    "timestamp": pa.timestamp("us"),
    "json": pa.string(),
    "vector": pa.list_(pa.float32()),
}


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    """The Arrow schema matching a column list, used to build insert batches."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in columns])


def vector_bytes(value: Any) -> Any:
    """A vector (a list of floats) as float32 bytes, for engines without an array type (SQLite,
    MariaDB); other values unchanged. ``Backend.read_vector`` reads them back."""
    return np.asarray(value, np.float32).tobytes() if isinstance(value, list) else value


def _column_array(values: list[Any]) -> pa.Array:
    """Arrow array for one result column, whose values may mix types (SQLite has no column types)."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def rows_to_arrow(description: Any, rows: Sequence[Sequence[Any]]) -> pa.Table:
    """An Arrow table from a DB-API cursor's ``description`` and fetched rows."""
    names = [d[0] for d in description or ()]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    # from_arrays keeps duplicate names (SELECT a.label, b.label ...), as DuckDB does
    return pa.Table.from_arrays([_column_array(list(c)) for c in columns], names=names)


def qmark_to_format(sql: str) -> str:
    """Rewrite ``?`` placeholders as ``%s`` (and ``%`` as ``%%``) outside quotes and comments,
    for drivers with the ``format`` parameter style (psycopg, PyMySQL)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i:end + 1].replace("%", "%%"))
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        else:
            out.append("%s" if ch == "?" else "%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


class Backend(ABC):
    """One database engine. Subclasses register URL schemes in :mod:`sqlvision.db`."""

    dialect: ClassVar[str]
    #: sqlglot's name for this engine's SQL (to read users' statements as the engine would)
    sqlglot_dialect: ClassVar[str]
    quote_char: ClassVar[str] = '"'
    #: the engine's identifier limit in UTF-8 bytes, where it counts bytes (PostgreSQL)
    max_identifier_bytes: ClassVar[int | None] = None
    type_names: ClassVar[dict[str, str]]

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self._tx_depth = 0

    # -- names -------------------------------------------------------------------------------
    def quote(self, name: str) -> str:
        """Quote a (possibly schema-qualified) table or a column name for this dialect."""
        return quote_name(name, self.quote_char, self.max_identifier_bytes)

    def quote_column(self, name: str) -> str:
        """Quote a single column name (dots are part of the name, not a qualifier)."""
        return quote_identifier(name, self.quote_char, self.max_identifier_bytes)

    def check_name(self, name: str) -> str:
        """Refuse ``name`` before anything is created if this engine could not hold it, or if
        it names a schema that does not exist (``a.b`` is table ``b`` of schema ``a``)."""
        self.quote(name)
        parts = split_name(name)
        if len(parts) > 1 and not self.schema_exists(parts[:-1]):
            raise SqlvisionError(
                f"{name!r} is table {parts[-1]!r} of schema {'.'.join(parts[:-1])!r}, which does "
                "not exist", "create the schema first, or use a name without dots")
        return name

    def schema_exists(self, parts: Sequence[str]) -> bool:
        """Whether the schema named by ``parts`` (``[schema]`` or ``[catalog, schema]``) exists."""
        return True

    def index_name(self, table: str, columns: Sequence[str]) -> str:
        """The name of sqlvision's index on ``table`` over ``columns``."""
        return derived_name(split_name(table)[-1], *columns, "idx")

    def key_too_long(self, column: Column, value: str) -> str | None:
        """Why ``value`` cannot be stored in the indexed text ``column`` here, or ``None``."""
        return None

    def quote_literal(self, value: str) -> str:
        """A string literal, for the rare statement that cannot take parameters (DDL)."""
        return "'" + value.replace("'", "''") + "'"

    # -- statements ----------------------------------------------------------------------------
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement that returns nothing."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run a query and return all of its rows as an Arrow table."""

    @abstractmethod
    def stream(
        self, sql: str, params: Sequence[Any] = (), batch_rows: int = 1024
    ) -> Iterator[pa.RecordBatch]:
        """Yield a query's rows in Arrow batches without holding the whole result."""

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or ``None``."""
        table = self.query(sql, params)
        return table.column(0)[0].as_py() if table.num_rows else None

    # -- transactions ----------------------------------------------------------------------------
    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: the outermost block commits on success and rolls back on error."""
        if self._tx_depth:
            self._tx_depth += 1
            try:
                yield
            finally:
                self._tx_depth -= 1
            return
        self._begin()
        self._tx_depth = 1
        try:
            yield
        except BaseException:
            self._tx_depth = 0
            self._rollback()
            raise
        self._tx_depth = 0
        self._commit()

    # -- tables ------------------------------------------------------------------------------------
    @abstractmethod
    def table_exists(self, name: str) -> bool:
        """Whether ``name`` (optionally schema-qualified) is a table or view."""

    @abstractmethod
    def table_columns(self, name: str) -> list[str]:
        """Column names of an existing table, in order."""

    @abstractmethod
    def list_tables(self) -> list[str]:
        """Tables and views visible to the user."""

    def create_table(self, name: str, columns: Sequence[Column],
                     primary_key: Sequence[str] = ()) -> None:
        """Create ``name`` with ``columns`` (and a composite ``primary_key``) unless it exists."""
        defs = []
        for col in columns:
            parts = [self.quote_column(col.name), self.column_type(col)]
            if col.primary_key:
                parts.append("PRIMARY KEY")
            elif col.unique:
                parts.append("UNIQUE")
            if col.not_null and not col.primary_key:
                parts.append("NOT NULL")
            defs.append(" ".join(parts))
        if primary_key:
            defs.append(f"PRIMARY KEY ({', '.join(self.quote_column(c) for c in primary_key)})")
        self.execute(f"CREATE TABLE IF NOT EXISTS {self.quote(name)} ({', '.join(defs)})")

    def column_type(self, column: Column) -> str:
        """The SQL type (with storage options) for a column in ``CREATE TABLE``."""
        return self.type_names[column.type]

    def create_index(self, table: str, columns: Sequence[str]) -> None:
        """Create an index on ``columns`` unless one of the same name exists."""
        index = self.index_name(table, columns)
        cols = ", ".join(self.quote_column(c) for c in columns)
        self.execute(
            f"CREATE INDEX IF NOT EXISTS {self.quote_column(index)} ON {self.quote(table)} ({cols})"
        )

    def drop_table(self, name: str) -> None:
        """Drop ``name`` if it exists."""
        self.execute(f"DROP TABLE IF EXISTS {self.quote(name)}")

    def add_column(self, table: str, column: Column) -> None:
        """Add a column to an existing table."""
        self.execute(
            f"ALTER TABLE {self.quote(table)} ADD COLUMN "
            f"{self.quote_column(column.name)} {self.type_names[column.type]}"
        )

    # -- bulk data -----------------------------------------------------------------------------------
    def insert(self, table: str, data: pa.Table) -> None:
        """Append ``data`` to ``table`` (columns matched by name). Engines override with a fast path."""
        if not data.num_rows:
            return
        cols = ", ".join(self.quote_column(c) for c in data.column_names)
        marks = ", ".join("?" for _ in data.column_names)
        self.executemany(
            f"INSERT INTO {self.quote(table)} ({cols}) VALUES ({marks})", self._rows(data)
        )

    def update(self, table: str, key: str, data: pa.Table) -> None:
        """Set the other columns of ``data`` on rows of ``table`` whose ``key`` matches."""
        if not data.num_rows:
            return
        others = [c for c in data.column_names if c != key]
        sets = ", ".join(f"{self.quote_column(c)} = ?" for c in others)
        rows = self._rows(data.select([*others, key]))
        self.executemany(
            f"UPDATE {self.quote(table)} SET {sets} WHERE {self.quote_column(key)} = ?", rows
        )

    def update_join(self, target: str, target_key: str, source: str, source_key: str,
                    assignments: dict[str, str], where: str, params: Sequence[Any]) -> None:
        """``UPDATE target SET col = s.col ... FROM source s WHERE s.key = target.key AND where``.

        ``where`` may use ``s.`` for the source and unqualified target columns.
        """
        t = self.quote(target)
        sets = ", ".join(f"{self.quote_column(c)} = s.{self.quote_column(v)}"
                         for c, v in assignments.items())
        self.execute(
            f"UPDATE {t} SET {sets} FROM {self.quote(source)} AS s "
            f"WHERE s.{self.quote_column(source_key)} = {t}.{self.quote_column(target_key)} "
            f"AND {where}", params)

    def byte_length(self, expression: str) -> str:
        """SQL for the length in bytes of a BLOB ``expression``."""
        return f"octet_length({expression})"

    def too_large(self, n_bytes: int) -> str | None:
        """Why a value of ``n_bytes`` (an image, a model) cannot be stored in one statement here,
        or ``None`` if it can."""
        return None

    def _rows(self, data: pa.Table) -> list[tuple[Any, ...]]:
        return list(zip(*(col.to_pylist() for col in data.columns), strict=True))

    # -- lifecycle ------------------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    # -- other processes reading the same database file ---------------------------------------------
    #: whether a process reading the file keeps this one from writing it (DuckDB: one process
    #: holds a file it may write, so while it is lent this backend writes only inside
    #: :meth:`take_file_back`)
    readers_block_writes: ClassVar[bool] = False

    def reader_url(self) -> DatabaseURL | None:
        """The URL other processes of this machine open to read this database from its file
        (``open_backend(url, read_only=True)``); ``None`` without a file (in memory, servers,
        whose URLs have no path)."""
        if self.url.path in ("", ":memory:"):
            return None
        return dataclasses.replace(self.url, path=os.path.abspath(self.url.path))

    @contextlib.contextmanager
    def lend_file(self) -> Iterator[None]:
        """Let other processes open the file read-only until the block ends."""
        yield

    @contextlib.contextmanager
    def take_file_back(self) -> Iterator[None]:
        """Hold the lent file again for the block (to write), then lend it again."""
        yield

    # -- capabilities ---------------------------------------------------------------------------
    #: whether Python functions can be called from this engine's SQL (see :meth:`install_functions`)
    sql_functions: ClassVar[bool] = False
    #: whether they run over batches of rows (else once per row)
    vectorized_functions: ClassVar[bool] = False
    #: whether struct and list values are native here (else they are JSON text)
    native_lists: ClassVar[bool] = False

    def install_functions(self, functions: Sequence[SqlFunction]) -> None:
        """Make ``functions`` callable from SQL on this connection (replacing earlier ones)."""
        raise SqlvisionError(
            f"{self.dialect} cannot run Python functions inside SQL",
            "use ML.PREDICT(MODEL m, (SELECT ...)), or run sqlvision predict and query "
            "sv_predictions or the TABLE_predicted view")

    def adapt_query(self, sql: str) -> str:
        """``sql`` in the form this engine runs (the functions' struct and list syntax)."""
        return sql

    def field(self, expression: str, name: str) -> str:
        """SQL reading field ``name`` of a struct value (or of a JSON object where structs are
        JSON text)."""
        return f"({expression}).{self.quote_column(name)}"

    def json_top_k(self, expression: str, k: int, min_prob: float) -> str:
        """SQL keeping the first ``k`` entries with ``probability >= min_prob`` of a stored JSON
        top-k list (``[{label, probability}, ...]``, most probable first)."""
        raise SqlvisionError(f"{self.dialect} cannot cut top-k lists in SQL",
                             "leave top_k and min_prob out")

    def nearest(self, table: str, filters: dict[str, Any], query: np.ndarray,
                k: int) -> tuple[list[Any], list[float]] | None:
        """``(image ids, cosine similarities)`` of the ``k`` stored vectors of ``table``
        (``image_id``, ``embedding``; rows matching ``filters``) nearest ``query``, computed by
        the database; ``None`` where it cannot (the caller scans)."""
        return None

    @staticmethod
    def read_vector(value: Any) -> np.ndarray:
        """A stored vector (a list, or float32 bytes where there is no array type) as an array."""
        if isinstance(value, bytes | bytearray | memoryview):
            return np.frombuffer(value, np.float32)
        return np.asarray(value, np.float32)


class InformationSchemaBackend(Backend):
    """An engine whose catalog is the SQL standard's ``information_schema`` (DuckDB, MariaDB):
    table lookups come from :meth:`_where_name`, the engine's way to pin a name down."""

    #: the condition on ``information_schema.tables`` that selects the current schema's tables
    current_schema_sql: ClassVar[str]

    @abstractmethod
    def _where_name(self, name: str) -> tuple[str, list[Any]]:
        """A condition (and its parameters) on ``information_schema`` rows naming ``name``."""

    def table_exists(self, name: str) -> bool:
        where, params = self._where_name(name)
        return bool(self.scalar(f"SELECT count(*) FROM information_schema.tables WHERE {where}",
                                params))

    def table_columns(self, name: str) -> list[str]:
        where, params = self._where_name(name)
        rows = self.query(f"SELECT column_name FROM information_schema.columns WHERE {where} "
                          "ORDER BY ordinal_position", params)
        return rows.column(0).to_pylist()

    def list_tables(self) -> list[str]:
        rows = self.query("SELECT table_name FROM information_schema.tables "
                          f"WHERE {self.current_schema_sql} ORDER BY table_name")
        return rows.column(0).to_pylist()
