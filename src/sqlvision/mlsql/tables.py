"""The SQL each ``ML.*`` table reference becomes, on the engine at hand.

- Where Python functions run vectorized inside SQL (DuckDB), the input query's rows are scored
  through the SQL function ``ml_predict`` / ``embed``, once per row, in a materialized CTE.
- Elsewhere (PostgreSQL, MariaDB; SQLite, whose functions run row by row, when the input reads
  one table and selects its id) the rows with no stored prediction yet for that model version
  are scored first, in batches as ``predict`` does (incrementally, into ``sv_predictions`` /
  ``sv_embeddings``), then the answer is a join: rerunning is cheap and the results are the
  stored ones. SQLite scores any other input through its row functions.
- ``ML.EVALUATE``, ``ML.CONFUSION_MATRIX`` and ``ML.MODELS`` are computed here and handed to
  the engine as a table of literals, so they compose with the rest of the statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from sqlvision.errors import SqlvisionError
from sqlvision.mlsql.parse import Call
from sqlvision.models import registry
from sqlvision.tables import ImageTable

if TYPE_CHECKING:
    from sqlvision.connection import Database
    from sqlvision.db.base import Backend

IMAGE_COLUMNS = ("data", "image", "content", "bytes", "uri", "path")
PREDICT_OPTIONS = ("top_k", "min_prob", "image_column")
EVALUATE_OPTIONS = ("label_column", "image_column", "top_k")
STORED_TOP_K = 5  # what sv_predictions keeps per row unless a larger top_k is asked for


def check_options(call: Call, allowed: Sequence[str]) -> None:
    """Refuse STRUCT fields this function does not take."""
    unknown = sorted(set(call.options) - set(allowed))
    if unknown:
        raise SqlvisionError(f"ML.{call.kind} has no option {unknown[0]!r}",
                             f"its options: {', '.join(allowed)}")


def input_columns(backend: Backend, query: str) -> pa.Schema:
    """The columns (and, where the engine says, types) of the input query."""
    try:
        return backend.query(f"SELECT * FROM ({query}) AS sv_columns LIMIT 0").schema
    except SqlvisionError:
        raise
    except Exception as exc:
        raise SqlvisionError(f"the input query of ML.PREDICT fails: {' '.join(str(exc).split())}",
                             "run the subquery on its own to check it") from exc


def image_column(schema: pa.Schema, call: Call) -> str:
    """The input column holding the images: the ``image_column`` option, a column with a usual
    name (``data``, ``image``, ``uri``, ...), or the one binary column."""
    names = list(schema.names)
    wanted = call.options.get("image_column")
    if wanted is not None:
        if wanted not in names:
            raise SqlvisionError(f"the input query has no column {wanted!r} (columns: {names})",
                                 "name one of its columns in image_column")
        return str(wanted)
    for usual in IMAGE_COLUMNS:
        for name in names:
            if name.lower() == usual:
                return name
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if len(binary) == 1:
        return binary[0]
    raise SqlvisionError(f"which column of the input query holds the images? (columns: {names})",
                         "select it as data, or say STRUCT('col' AS image_column)")


def _cut(call: Call) -> tuple[int, float]:
    k = int(call.options.get("top_k", STORED_TOP_K))
    min_prob = float(call.options.get("min_prob", 0.0))
    if k < 1 or not 0.0 <= min_prob <= 1.0:
        raise SqlvisionError(f"ML.{call.kind}: top_k must be >= 1 and min_prob within [0, 1]",
                             "for example STRUCT(5 AS top_k, 0.1 AS min_prob)")
    return k, min_prob


def predict_sql(db: Database, call: Call) -> str:
    """``ML.PREDICT``: the input's columns plus ``predicted_label``, ``confidence``, ``top_k``
    (a list, or JSON text where the engine has no lists) and ``prediction_error``."""
    check_options(call, PREDICT_OPTIONS)
    backend = db.backend
    schema = input_columns(backend, call.query)
    image = image_column(schema, call)
    k, min_prob = _cut(call)
    keep = ", ".join(f"sv_in.{backend.quote_column(c)}" for c in schema.names)
    if _in_sql(db, call, schema):
        db.register_functions([call.model])
        p = "sv_in.sv_p"
        return (f"(WITH sv_in AS MATERIALIZED (SELECT sv_q.*, ml_predict("
                f"{backend.quote_literal(call.model)}, sv_q.{backend.quote_column(image)}, {k}, "
                f"{min_prob!r}) AS sv_p FROM ({call.query}) AS sv_q) SELECT {keep}, "
                f"{backend.field(p, 'label')} AS predicted_label, "
                f"{backend.field(p, 'confidence')} AS confidence, "
                f"{backend.field(p, 'top_k')} AS top_k, "
                f"{backend.field(p, 'error')} AS prediction_error FROM sv_in)")
    stored = _stored(db, call, schema, image, "predictions")
    from sqlvision.predict.batch import PREDICTIONS, predict_table

    predict_table(backend, stored.ref, stored.table, where=stored.rows, top_k=max(k, STORED_TOP_K),
                  progress=False, log=_quiet)
    top_k = ("sv_p.top_k" if (k, min_prob) == (STORED_TOP_K, 0.0)
             else backend.json_top_k("sv_p.top_k", k, min_prob))
    return (f"(SELECT {keep}, sv_p.label AS predicted_label, sv_p.confidence AS confidence, "
            f"{top_k} AS top_k, sv_p.error AS prediction_error FROM ({call.query}) AS sv_in "
            f"LEFT JOIN {backend.quote(PREDICTIONS)} AS sv_p ON {stored.join(backend, 'sv_p')})")


def embed_sql(db: Database, call: Call) -> str:
    """``ML.EMBED``: the input's columns plus ``embedding`` (the penultimate-layer vector)."""
    check_options(call, ("image_column",))
    backend = db.backend
    schema = input_columns(backend, call.query)
    image = image_column(schema, call)
    keep = ", ".join(f"sv_in.{backend.quote_column(c)}" for c in schema.names)
    if _in_sql(db, call, schema):
        db.register_functions([call.model])
        return (f"(SELECT {keep}, embed({backend.quote_literal(call.model)}, "
                f"sv_in.{backend.quote_column(image)}) AS embedding FROM ({call.query}) AS sv_in)")
    stored = _stored(db, call, schema, image, "embeddings")
    from sqlvision.embed import EMBEDDINGS, embed_table

    embed_table(backend, stored.ref, stored.table, where=stored.rows, progress=False, log=_quiet)
    return (f"(SELECT {keep}, sv_e.embedding AS embedding FROM ({call.query}) AS sv_in "
            f"LEFT JOIN {backend.quote(EMBEDDINGS)} AS sv_e ON {stored.join(backend, 'sv_e')})")


def _quiet(_line: str) -> None:
    """Scoring inside a statement prints nothing: the statement's answer is its result."""


def _in_sql(db: Database, call: Call, schema: pa.Schema) -> bool:
    """Whether to score through the SQL functions: where the engine runs them vectorized, or
    runs them at all and the input is not one table's rows with their ids (which the stored
    path, batched like ``predict``, needs)."""
    backend = db.backend
    if not backend.sql_functions:
        return False
    if backend.vectorized_functions:
        return True
    table = source_table(backend, call.query)
    if table is None or not backend.table_exists(table):
        return True
    try:
        return ImageTable.resolve(backend, table).id not in schema.names
    except SqlvisionError:
        return True


@dataclass(frozen=True)
class Stored:
    """Where stored results for an ``ML.*`` input are: the model version, the image table the
    input reads, and the condition selecting its rows there."""

    name: str
    version: int
    table: ImageTable
    rows: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def join(self, backend: Backend, alias: str) -> str:
        """The condition joining stored rows (``alias``) with the input (``sv_in``)."""
        literal = backend.quote_literal
        return (f"{alias}.source_table = {literal(self.table.name)} AND "
                f"{alias}.model = {literal(self.name)} AND {alias}.model_version = "
                f"{int(self.version)} AND {alias}.image_id = "
                f"sv_in.{backend.quote_column(self.table.id)}")


def _stored(db: Database, call: Call, schema: pa.Schema, image: str, what: str) -> Stored:
    """The stored results an input's rows are keyed by; the input must read one table and
    select its id column. The model itself is not read here (only its version)."""
    backend = db.backend
    name, version = registry.parse_ref(call.model)
    number = registry.resolve_version(backend, name, version)
    table = source_table(backend, call.query)
    if table is None:
        raise SqlvisionError(
            f"on {backend.dialect}, ML.{call.kind} stores {what} by table and row id, so its "
            "input must read one table", "SELECT id, data FROM t WHERE ... (a view works too)")
    source = ImageTable.resolve(backend, table, image_col=image)
    if source.id not in schema.names:
        raise SqlvisionError(
            f"on {backend.dialect}, ML.{call.kind} joins stored {what} by row id: the input "
            f"query must select {table}.{source.id}", f"SELECT {source.id}, {image} FROM {table}")
    q = backend.quote_column(source.id)
    return Stored(name, number, source, f"{q} IN (SELECT sv_rows.{q} FROM ({call.query}) AS sv_rows)")


def source_table(backend: Backend, query: str) -> str | None:
    """The one table a ``SELECT ... FROM t [WHERE ...]`` reads (schema-qualified if it is),
    or ``None`` for any other query."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(query, read=backend.sqlglot_dialect)
    except sqlglot.errors.ParseError:
        return None
    source = tree.args.get("from_") or tree.args.get("from")
    if not isinstance(tree, exp.Select) or source is None or tree.args.get("joins") \
            or not isinstance(source.this, exp.Table) or not source.this.name:
        return None
    table = source.this
    return ".".join(part for part in (table.catalog, table.db, table.name) if part)


# -- computed here, handed over as literals ------------------------------------------------------
def literal_table(backend: Backend, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` as a derived table of literals (``UNION ALL`` of one-row SELECTs, which every
    engine reads alike)."""
    double = backend.type_names["double"]

    def value(v: Any) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, float):
            return f"CAST({v!r} AS {double})"
        if isinstance(v, int):
            return str(v)
        return backend.quote_literal(str(v))

    columns = [backend.quote_column(n) for n in names]
    if not rows:
        return "(SELECT " + ", ".join(f"NULL AS {c}" for c in columns) + " LIMIT 0)"
    selects = ["SELECT " + ", ".join(f"{value(v)} AS {c}" for v, c in zip(row, columns, strict=True))
               for row in rows]
    return "(" + " UNION ALL ".join(selects) + ")"


def _evaluation(db: Database, call: Call) -> Any:
    """The :class:`sqlvision.evaluate.Evaluation` of the model on the input's labeled rows."""
    from sqlvision.evaluate import score_predictions

    check_options(call, EVALUATE_OPTIONS)
    backend = db.backend
    schema = input_columns(backend, call.query)
    label = str(call.options.get("label_column", "label"))
    if label not in schema.names:
        raise SqlvisionError(f"ML.{call.kind} needs the true labels: the input query has no "
                             f"column {label!r} (columns: {list(schema.names)})",
                             "select the label column, or say STRUCT('col' AS label_column)")
    k = int(call.options.get("top_k", STORED_TOP_K))
    predicted = Call("PREDICT", call.start, call.end, call.model, call.query,
                     {key: v for key, v in call.options.items() if key == "image_column"})
    q = backend.quote_column
    rows = backend.query(
        f"SELECT sv_e.{q(label)} AS truth, sv_e.predicted_label AS predicted, "
        f"sv_e.confidence AS confidence, sv_e.top_k AS top_k FROM {predict_sql(db, predicted)} "
        "AS sv_e").to_pylist()
    name, version = registry.parse_ref(call.model)
    number, classes = registry.load_classes(backend, name, version)
    return score_predictions(f"{name}:{number}", classes, rows, str, k, source="the input query")


def evaluate_sql(db: Database, call: Call) -> str:
    """``ML.EVALUATE``: one row for the whole input (``class`` NULL: accuracy, top-k accuracy,
    macro averages) and one per class (precision, recall, F1, support)."""
    ev = _evaluation(db, call)
    per_class = ev.per_class
    n = len(per_class)
    overall = [None, sum(r["precision"] for r in per_class) / n,
               sum(r["recall"] for r in per_class) / n, ev.macro_f1, ev.rows, ev.accuracy,
               ev.top_k_accuracy]
    rows = [overall] + [[r["label"], r["precision"], r["recall"], r["f1"], r["support"], None,
                         None] for r in per_class]
    return literal_table(db.backend, ["class", "precision", "recall", "f1_score", "support",
                                      "accuracy", "top_k_accuracy"], rows)


def confusion_sql(db: Database, call: Call) -> str:
    """``ML.CONFUSION_MATRIX``: ``expected_label``, then one count column per predicted class."""
    ev = _evaluation(db, call)
    rows = [[label, *counts] for label, counts in zip(ev.classes, ev.confusion, strict=True)]
    return literal_table(db.backend, ["expected_label", *ev.classes], rows)


def models_sql(db: Database, call: Call) -> str:
    """``ML.MODELS``: one row per registered model version (no bytes)."""
    names = ["name", "version", "architecture", "classes", "metrics", "created_at"]
    if not db.backend.table_exists(registry.MODELS):
        return literal_table(db.backend, names, [])
    columns = ", ".join(db.backend.quote_column(n) for n in names)
    return f"(SELECT {columns} FROM {db.backend.quote(registry.MODELS)})"


EXPANSIONS = {"PREDICT": predict_sql, "EMBED": embed_sql, "EVALUATE": evaluate_sql,
              "CONFUSION_MATRIX": confusion_sql, "MODELS": models_sql}
