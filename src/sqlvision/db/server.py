"""What PostgreSQL and MariaDB/MySQL have in common: a client connection over the network.

A server backend keeps one connection for statements and writes, and separate reader
connections for streamed results, so a caller may write (predictions, embeddings) while it
reads the rows to process. Driver errors about the connection become one-line messages that
name the server without its password.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from sqlvision.db.base import Backend, qmark_to_format, rows_to_arrow
from sqlvision.db.url import DatabaseURL
from sqlvision.errors import SqlvisionError

CONNECT_HINT = ("check that the server is running and that the host, port, user, password and "
                "database in the URL are right")
_temp_ids = itertools.count()
CONCURRENT_HINT = ("another sqlvision run is probably writing the same table: let it finish, then "
                   "rerun this command; it completes what is left, without duplicates")
LOST_HINT = ("rerun the same command once the server is back: work already committed is kept "
             "and is not repeated")


class ServerBackend(Backend):
    """A database server reached through a DB-API driver with the ``format`` parameter style."""

    #: driver exceptions that mean the connection failed or went away
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: driver exceptions for constraint violations (a duplicate key among them)
    integrity_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(url)
        self.con = self._open()
        self._idle_readers: list[Any] = []

    # -- connections ------------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any:
        """A new autocommit driver connection to ``self.url``."""

    def _open(self) -> Any:
        try:
            return self._connect()
        except self.connection_errors as exc:
            raise SqlvisionError(f"cannot connect to {self.url.redacted}: {self.clean(exc)}",
                                 CONNECT_HINT) from None

    def clean(self, exc: BaseException) -> str:
        """The driver's message on one line, with every credential of the URL masked."""
        return self.url.mask(" ".join(str(exc).split()) or type(exc).__name__)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn a lost connection into a message that says how to resume, and a duplicate key
        (another run writing the same rows) into one that says what to do."""
        try:
            yield
        except self.connection_errors as exc:
            if not self.is_disconnect(exc):
                raise
            raise SqlvisionError(f"lost the connection to {self.url.redacted}: {self.clean(exc)}",
                                 LOST_HINT) from exc
        except self.integrity_errors as exc:
            if not self.is_duplicate_key(exc):
                raise
            raise SqlvisionError(f"rows written at the same time by another run "
                                 f"({self.clean(exc)})", CONCURRENT_HINT) from exc

    @abstractmethod
    def is_disconnect(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection is gone (rather than a bad statement)."""

    @abstractmethod
    def is_duplicate_key(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a unique or primary key violation."""

    # -- statements ----------------------------------------------------------------------------------
    @staticmethod
    def prepare(sql: str, params: Sequence[Any]) -> tuple[str, Sequence[Any] | None]:
        """Internal SQL uses ``?``; the drivers want ``%s``. SQL without parameters is sent as
        written, so a user's ``%`` needs no escaping."""
        if not params:
            return sql, None
        return qmark_to_format(sql), [_adapt(p) for p in params]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        sql, args = self.prepare(sql, params)
        with self.guard(), self.con.cursor() as cur:
            cur.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        sql, _ = self.prepare(sql, rows[0])
        with self.guard(), self.con.cursor() as cur:
            cur.executemany(sql, [[_adapt(v) for v in row] for row in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        sql, args = self.prepare(sql, params)
        with self.guard(), self.con.cursor() as cur:
            cur.execute(sql, args)
            if cur.description is None:
                return pa.table({})
            return rows_to_arrow(cur.description, cur.fetchall())

    def stream(
        self, sql: str, params: Sequence[Any] = (), batch_rows: int = 1024
    ) -> Iterator[pa.RecordBatch]:
        sql, args = self.prepare(sql, params)
        reader = self._idle_readers.pop() if self._idle_readers else None
        healthy = False
        try:
            with self.guard():
                reader = reader or self._connect()
                for description, rows in self._server_side(reader, sql, args, batch_rows):
                    yield from rows_to_arrow(description, rows).to_batches()
            healthy = True
        finally:
            if reader is not None:
                if healthy:
                    self._idle_readers.append(reader)
                else:
                    with contextlib.suppress(Exception):
                        reader.close()

    @abstractmethod
    def _server_side(self, reader: Any, sql: str, args: Sequence[Any] | None,
                     batch_rows: int) -> Iterator[tuple[Any, list[Any]]]:
        """Run ``sql`` on ``reader`` with a server-side cursor; yield (description, rows) chunks."""

    def update(self, table: str, key: str, data: pa.Table) -> None:
        """Bulk-insert the new values into a temporary table, then one UPDATE join."""
        if not data.num_rows:
            return
        temp = self.temporary_name(f"sv_update_{next(_temp_ids)}")
        cols = ", ".join(self.quote_column(c) for c in data.column_names)
        self.execute(f"CREATE TEMPORARY TABLE {self.quote(temp)} AS "
                     f"SELECT {cols} FROM {self.quote(table)} WHERE 1 = 0")
        try:
            self.insert(temp, data)
            self.update_join(table, key, temp, key,
                             {c: c for c in data.column_names if c != key}, "1 = 1", [])
        finally:
            self.drop_table(temp)

    def temporary_name(self, name: str) -> str:
        """How a temporary table called ``name`` is named in statements."""
        return name

    # -- transactions ----------------------------------------------------------------------------------
    def _begin(self) -> None:
        self.execute("BEGIN")

    def _commit(self) -> None:
        self.execute("COMMIT")

    def _rollback(self) -> None:
        with contextlib.suppress(*self.connection_errors):
            self.execute("ROLLBACK")

    # -- lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        for connection in [self.con, *self._idle_readers]:
            with contextlib.suppress(Exception):
                connection.close()
        self._idle_readers.clear()


def _adapt(value: Any) -> Any:
    """numpy scalars (from Arrow or model outputs) as the plain Python values drivers know."""
    return value.item() if isinstance(value, np.generic) else value
