"""SQLite has no struct fields or UNNEST: rewrite the two forms users write in DuckDB.

- ``predict('m', data).label`` becomes ``json_extract(predict('m', data), '$.label')``;
- ``SELECT unnest(predict_topk('m', data, 3)) FROM t`` becomes a join with
  ``json_each(predict_topk('m', data, 3))``, one row per element (its ``value``, JSON text).

Queries without the SQL functions are passed through untouched.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any


def _call_name(node: Any) -> str | None:
    """The name of a plain function call (through parentheses), else ``None``."""
    from sqlglot import exp

    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    return None


def _qualify_single_table(select: Any) -> None:
    """json_each() brings columns of its own (id, key, value, ...): qualify the query's bare
    column names with its one table so they stay unambiguous."""
    from sqlglot import exp

    source = select.args.get("from_") or select.args.get("from")
    if source is None or select.args.get("joins") or not isinstance(source.this, exp.Table):
        return
    table = source.this.alias_or_name
    for column in select.find_all(exp.Column):
        if not column.table and column.find_ancestor(exp.Select) is select:
            column.set("table", exp.to_identifier(table))


def rewrite_for_sqlite(sql: str, functions: Collection[str]) -> str:
    """The SQLite form of ``sql`` for calls of ``functions`` (see the module doc)."""
    names = {f.lower() for f in functions}
    called = names and re.search(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\s*\(",
                                 sql, re.IGNORECASE)
    if not called or ("." not in sql and "unnest" not in sql.lower()):
        return sql
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="sqlite")

    def plain_calls(node: Any) -> Any:
        # sqlglot reads predict(...) as BigQuery ML's PREDICT: keep it a plain function call.
        if isinstance(node, exp.Predict):
            return exp.Anonymous(this="predict", expressions=[node.this, node.expression])
        return node

    def fields(node: Any) -> Any:
        if isinstance(node, exp.Dot) and _call_name(node.this) in names:
            path = exp.Literal.string(f"$.{node.expression.name}")
            return exp.Anonymous(this="json_extract", expressions=[node.this, path])
        return node

    tree = tree.transform(plain_calls).transform(fields)
    for i, select in enumerate(tree.find_all(exp.Select)):
        for j, projection in enumerate(list(select.expressions)):
            target = projection.this if isinstance(projection, exp.Alias) else projection
            if not isinstance(target, exp.Unnest | exp.Explode):
                continue
            argument = target.expressions[0] if isinstance(target, exp.Unnest) else target.this
            _qualify_single_table(select)
            alias = f"sv_unnest_{i}_{j}"
            select.join(exp.Table(this=exp.Anonymous(this="json_each", expressions=[argument]),
                                  alias=exp.TableAlias(this=exp.to_identifier(alias))),
                        join_type="CROSS", copy=False)
            name = projection.alias if isinstance(projection, exp.Alias) else "unnest"
            select.expressions[j] = exp.alias_(exp.column("value", table=alias), name)
    return tree.sql(dialect="sqlite")
