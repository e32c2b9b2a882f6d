"""Machine learning in SQL, on every engine: ``CREATE MODEL``, ``DROP MODEL``,
``CREATE EXTERNAL TABLE`` (a table of file references) and the
``ML.PREDICT`` / ``ML.EVALUATE`` / ``ML.CONFUSION_MATRIX`` / ``ML.EMBED`` / ``ML.MODELS``
table functions, in BigQuery's spelling. :func:`run` is what ``Database.sql`` and
``sqlvision sql`` call; statements without them pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from sqlvision.errors import SqlvisionError
from sqlvision.mlsql.parse import CreateExternalTable, CreateModel, DropModel, find_calls, parse_statement

if TYPE_CHECKING:
    from sqlvision.connection import Database

_MARKERS = ("model", "ml.", "external")


def mentions_ml(sql: str) -> bool:
    """A cheap test before tokenizing: could ``sql`` hold an ML statement or function?"""
    lowered = sql.lower()
    return any(marker in lowered for marker in _MARKERS)


def expand(db: Database, sql: str) -> str:
    """``sql`` with every ``ML.*`` table reference replaced by the engine's SQL for it (their
    input queries expanded first, so they may use ``ML.*`` too)."""
    from sqlvision.mlsql.tables import EXPANSIONS

    calls = find_calls(sql, db.backend.sqlglot_dialect)
    for n, call in reversed(list(enumerate(calls))):
        if call.query:
            call.query = expand(db, call.query)
        text = EXPANSIONS[call.kind](db, call)
        if not call.aliased:
            text += f" AS sv_ml_{n}"
        sql = sql[:call.start] + text + sql[call.end:]
    return sql


def run(db: Database, sql: str, params: Sequence[Any] = ()) -> pa.Table | None:
    """The result of ``sql`` if it is or uses an ML statement, else ``None`` (run it as is)."""
    if not mentions_ml(sql):
        return None
    statement = parse_statement(sql, db.backend.sqlglot_dialect)
    if statement is not None and params:
        raise SqlvisionError("CREATE MODEL, CREATE EXTERNAL TABLE and DROP MODEL take no "
                             "parameters",
                             "write the values into the statement")
    if isinstance(statement, CreateModel):
        from sqlvision.mlsql.create import create_model

        return create_model(db, statement)
    if isinstance(statement, CreateExternalTable):
        from sqlvision.mlsql.create import create_external_table

        return create_external_table(db, statement)
    if isinstance(statement, DropModel):
        from sqlvision.mlsql.create import drop_model

        return drop_model(db, statement)
    expanded = expand(db, sql)
    if expanded == sql:
        return None
    if params:
        raise SqlvisionError("statements with ML.* functions take no parameters",
                             "write the values into the statement")
    return db.backend.query(db.backend.adapt_query(expanded))
