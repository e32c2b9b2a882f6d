"""MariaDB and MySQL through PyMySQL: LOAD DATA LOCAL or multi-row INSERTs for bulk writes,
unbuffered reads.

URL: ``mysql://user:password@host:port/database`` (``mariadb://`` is the same). Query
parameters: ``unix_socket``, ``connect_timeout``, ``local_infile=0`` (never use LOAD DATA
LOCAL: it lets the server ask the client for a file, so turn it off for a server you do not
trust).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pymysql
import pymysql.cursors

from sqlvision.db.base import Column, InformationSchemaBackend, vector_bytes
from sqlvision.db.identifiers import split_name
from sqlvision.db.server import ServerBackend
from sqlvision.db.url import DatabaseURL
from sqlvision.errors import SqlvisionError

# Client and server error codes that mean the connection is gone.
_DISCONNECT_CODES = {1053, 1927, 2003, 2006, 2013, 2055, 4031}
_STATEMENT_BYTES = 4 * 1024 * 1024  # one multi-row INSERT carries up to this much
_LOCAL_INFILE_REFUSED = {1148, 2068, 3948, 4166}  # the server or client does not allow it


def _field(value: Any) -> bytes:
    """One value as a LOAD DATA field: ``\\N`` for NULL, text as UTF-8, bytes as they are,
    with the backslash, tab, newline and NUL escaped."""
    if value is None:
        return b"\\N"
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int | np.integer):
        return b"%d" % value
    if isinstance(value, float | np.floating):
        return repr(float(value)).encode()
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ").encode()
    value = vector_bytes(value)
    raw = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else str(value).encode()
    return (raw.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")
            .replace(b"\0", b"\\0"))


def _percent_safe(sql: str) -> str:
    """SQL text (quoted names) for a PyMySQL call with parameters, which %-formats it."""
    return sql.replace("%", "%%")


class MySQLBackend(ServerBackend, InformationSchemaBackend):
    """A MariaDB (or MySQL) database."""

    dialect = "mysql"
    sqlglot_dialect = "mysql"
    current_schema_sql = "table_schema = DATABASE()"
    quote_char = "`"
    connection_errors = (pymysql.err.OperationalError, pymysql.err.InterfaceError)
    integrity_errors = (pymysql.err.IntegrityError,)
    type_names: ClassVar[dict[str, str]] = {
        "bigint": "BIGINT",
        "int": "INT",
        "double": "DOUBLE",
        "bool": "BOOLEAN",
        "text": "LONGTEXT CHARACTER SET utf8mb4",
        "key": "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "blob": "LONGBLOB",
        "timestamp": "DATETIME(6)",
        "json": "LONGTEXT CHARACTER SET utf8mb4",
        "vector": "LONGBLOB",
    }

    def __init__(self, url: DatabaseURL) -> None:
        self._options = dict(parse_qsl(url.query))
        self.local_infile = self._options.get("local_infile", "1") != "0"
        super().__init__(url)
        self._max_packet = int(self.scalar("SELECT @@max_allowed_packet"))

    def _connect(self) -> Any:
        u = self.url
        params: dict[str, Any] = {
            "host": u.host or "localhost", "port": u.port or 3306, "user": u.user or "root",
            "password": u.password or "", "database": u.database, "charset": "utf8mb4",
            "autocommit": True, "local_infile": self.local_infile,
            "connect_timeout": int(self._options.get("connect_timeout", 10)),
        }
        if "unix_socket" in self._options:
            params["unix_socket"] = self._options["unix_socket"]
        return pymysql.connect(**params)

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        return bool(exc.args) and exc.args[0] in _DISCONNECT_CODES

    def is_duplicate_key(self, exc: BaseException) -> bool:
        return bool(exc.args) and exc.args[0] == 1062

    def _server_side(self, reader: Any, sql: str, args: Sequence[Any] | None,
                     batch_rows: int) -> Iterator[tuple[Any, list[Any]]]:
        with reader.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(sql, args)
            while rows := cur.fetchmany(batch_rows):
                yield cur.description, list(rows)

    def quote_literal(self, value: str) -> str:
        # A hex literal with a charset introducer means the same text whatever sql_mode says
        # about backslashes (NO_BACKSLASH_ESCAPES) or quotes (ANSI_QUOTES).
        return "_utf8mb4 X'" + value.encode().hex() + "'"

    # -- tables ------------------------------------------------------------------------------------
    def _where_name(self, name: str) -> tuple[str, list[Any]]:
        parts = split_name(name)
        if len(parts) > 2:
            raise SqlvisionError(f"bad MariaDB name {name!r}", "use NAME or DATABASE.NAME")
        if len(parts) == 2:
            return "table_schema = ? AND table_name = ?", parts
        return f"{self.current_schema_sql} AND table_name = ?", parts

    def schema_exists(self, parts: Sequence[str]) -> bool:
        return len(parts) == 1 and bool(self.scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", parts))

    def key_too_long(self, column: Column, value: str) -> str | None:
        limit = column.max_chars or 255
        if column.type != "key" or len(value) <= limit:
            return None
        return (f"{column.name} is {len(value):,} characters long; MariaDB indexes at most "
                f"{limit} here")

    def column_type(self, column: Column) -> str:
        if column.type == "key" and column.max_chars:
            return f"VARCHAR({column.max_chars}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        return self.type_names[column.type]

    def create_index(self, table: str, columns: Sequence[str]) -> None:
        # MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB has): look first.
        index = self.index_name(table, columns)
        where, params = self._where_name(table)
        if self.scalar(f"SELECT count(*) FROM information_schema.statistics WHERE {where} "
                       "AND index_name = ?", [*params, index]):
            return
        cols = ", ".join(self.quote_column(c) for c in columns)
        self.execute(f"CREATE INDEX {self.quote_column(index)} ON {self.quote(table)} ({cols})")

    # -- bulk data ------------------------------------------------------------------------------------
    def insert(self, table: str, data: pa.Table) -> None:
        """Rows with bytes (images, models) go through LOAD DATA LOCAL, which sends them as they
        are; other rows, or a server that refuses it, through multi-row INSERTs."""
        if not data.num_rows:
            return
        if self.local_infile and any(pa.types.is_binary(t) or pa.types.is_large_binary(t)
                                     for t in data.schema.types):
            try:
                self._load_data(table, data)
                return
            except pymysql.err.OperationalError as exc:
                if not exc.args or exc.args[0] not in _LOCAL_INFILE_REFUSED:
                    raise
                self.local_infile = False
        self._insert_statements(table, data)

    def _load_data(self, table: str, data: pa.Table) -> None:
        """``LOAD DATA LOCAL INFILE`` from a temporary tab-separated file of escaped bytes."""
        cols = _percent_safe(", ".join(self.quote_column(c) for c in data.column_names))
        fd, path = tempfile.mkstemp(prefix="sqlvision-", suffix=".tsv")
        try:
            with os.fdopen(fd, "wb") as f:
                for row in self._rows(data):
                    f.write(b"\t".join(_field(v) for v in row) + b"\n")
            with self.guard(), self.con.cursor() as cur:
                loaded = cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE {_percent_safe(self.quote(table))} "
                    "CHARACTER SET binary "
                    # hex literals: the same bytes whatever sql_mode says about backslashes
                    "FIELDS TERMINATED BY X'09' ESCAPED BY X'5C' LINES TERMINATED BY X'0A' "
                    f"({cols})", [path])
                if loaded != data.num_rows:
                    # LOCAL turns errors (a duplicate key, a bad value) into warnings: make
                    # them errors again, so the caller's transaction rolls back.
                    cur.execute("SHOW WARNINGS LIMIT 3")
                    warnings = "; ".join(str(w[2]) for w in cur.fetchall())
                    raise SqlvisionError(f"{table}: {loaded} of {data.num_rows} rows loaded "
                                         f"({warnings})", "nothing of this batch was kept")
        finally:
            os.unlink(path)

    def _insert_statements(self, table: str, data: pa.Table) -> None:
        """Multi-row INSERTs (PyMySQL's executemany batches the rows into statements of up to
        a few MB); a value over ``max_allowed_packet`` is named before anything is sent."""
        rows = [tuple(vector_bytes(v) for v in row) for row in self._rows(data)]
        largest = max((len(v) for row in rows for v in row if isinstance(v, bytes)), default=0)
        if largest and self.too_large(largest):
            raise SqlvisionError(
                f"a value of {largest / 2**20:.1f} MB for {table} exceeds the server's "
                f"max_allowed_packet ({self.max_packet() / 2**20:.0f} MB)",
                "raise it (SET GLOBAL max_allowed_packet = 1073741824, as an admin), or "
                "ingest with --reference to keep the bytes out of the database")
        cols = _percent_safe(", ".join(self.quote_column(c) for c in data.column_names))
        marks = ", ".join(["%s"] * data.num_columns)
        with self.guard(), self.con.cursor() as cur:
            cur.max_stmt_length = min(int(self.max_packet() * 0.9), _STATEMENT_BYTES)
            cur.executemany(f"INSERT INTO {_percent_safe(self.quote(table))} ({cols}) "
                            f"VALUES ({marks})", rows)

    def max_packet(self) -> int:
        """The server's ``max_allowed_packet`` in bytes."""
        return self._max_packet

    def too_large(self, n_bytes: int) -> str | None:
        # PyMySQL sends bytes as a hex literal (twice their size) inside the INSERT of the row.
        if 2 * n_bytes + 64 * 1024 <= self.max_packet():
            return None
        return (f"{n_bytes / 2**20:.1f} MB is more than the server's max_allowed_packet "
                f"({self.max_packet() / 2**20:.0f} MB) allows; raise it (SET GLOBAL "
                "max_allowed_packet = 1073741824) or ingest with --reference")

    def update_join(self, target: str, target_key: str, source: str, source_key: str,
                    assignments: dict[str, str], where: str, params: Sequence[Any]) -> None:
        t = self.quote(target)
        sets = ", ".join(f"{t}.{self.quote_column(c)} = s.{self.quote_column(v)}"
                         for c, v in assignments.items())
        self.execute(
            f"UPDATE {t} JOIN {self.quote(source)} AS s "
            f"ON s.{self.quote_column(source_key)} = {t}.{self.quote_column(target_key)} "
            f"SET {sets} WHERE {where}", params)

    def json_top_k(self, expression: str, k: int, min_prob: float) -> str:
        return ("COALESCE((SELECT JSON_ARRAYAGG(JSON_OBJECT('label', j.label, 'probability', "
                f"j.probability) ORDER BY j.n) FROM JSON_TABLE({expression}, '$[*]' COLUMNS("
                "n FOR ORDINALITY, label TEXT PATH '$.label', probability DOUBLE PATH "
                f"'$.probability')) AS j WHERE j.n <= {int(k)} AND j.probability >= "
                f"{float(min_prob)!r}), JSON_ARRAY())")
