"""``<table>_predicted``: each row of a table with its latest prediction per model, in SQL.

PostgreSQL and MariaDB cannot run ``predict()`` inside a query, so batch prediction keeps this
view current on every engine: the table's columns (without the image bytes) joined with
``sv_predictions``, one row per source row and model, from that model's newest version that
has predicted the row. Rows not predicted yet appear once, with NULL predictions.
"""

from __future__ import annotations

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.tables import ImageTable

PREDICTED_COLUMNS = ("model", "model_version", "predicted_label", "confidence", "top_k",
                     "prediction_error", "predicted_at")


def predicted_view_name(backend: Backend, table: str) -> str:
    """``photos`` -> ``photos_predicted`` (checked now, so a bad name fails before any work)."""
    return backend.check_name(f"{table}_predicted")


def create_predicted_view(backend: Backend, table: ImageTable, predictions: str) -> str:
    """(Re)create the view for ``table``; returns its name."""
    view = predicted_view_name(backend, table.name)
    q = backend.quote_column
    keep = [c for c in backend.table_columns(table.name)
            if c != table.image and c.lower() not in PREDICTED_COLUMNS]
    columns = ", ".join(f"t.{q(c)}" for c in keep)
    sql = (
        f"CREATE VIEW {backend.quote(view)} AS SELECT {columns}, p.model, p.model_version, "
        "p.label AS predicted_label, p.confidence, p.top_k, p.error AS prediction_error, "
        f"p.predicted_at FROM {backend.quote(table.name)} t LEFT JOIN ("
        "SELECT s.*, ROW_NUMBER() OVER (PARTITION BY s.image_id, s.model "
        f"ORDER BY s.model_version DESC) AS sv_rank FROM {backend.quote(predictions)} s "
        f"WHERE s.source_table = {backend.quote_literal(table.name)}"
        f") p ON p.image_id = t.{q(table.id)} AND p.sv_rank = 1"
    )
    try:
        with backend.transaction():
            backend.execute(f"DROP VIEW IF EXISTS {backend.quote(view)}")
            backend.execute(sql)
    except SqlvisionError:
        raise
    except Exception as exc:
        raise SqlvisionError(f"cannot create the view {view}: {' '.join(str(exc).split())}",
                             f"rename or drop the table named {view}; predictions were stored "
                             "in sv_predictions") from exc
    return view
