"""The review queue and relabeling (the active-learning loop): rows whose prediction disagrees
with their label come first, then the least confident; a new label is written to the table
with an audit row in ``sv_label_audit``, so training ``--from`` the model uses it."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from sqlvision.catalog import utcnow
from sqlvision.db.base import Column, arrow_schema
from sqlvision.models import registry
from sqlvision.predict.batch import PREDICTIONS
from sqlvision.serve.problems import Problem
from sqlvision.serve.queries import AUDIT, image_table, parse_json, prediction_version

AUDIT_COLUMNS = (
    Column("source_table", "key", not_null=True),
    Column("image_id", "bigint", not_null=True),
    Column("old_label", "text"),
    Column("new_label", "text"),
    Column("changed_by", "text"),
    Column("changed_at", "timestamp"),
)


def review_queue(db: Any, name: str, model: str, limit: int) -> dict[str, Any]:
    """Predicted rows not reviewed yet: misclassified first, then by rising confidence."""
    b = db.backend
    table = image_table(b, name)
    if table.label is None:
        raise Problem(422, f"table {name!r} has no label column")
    model_name, ref_version = registry.parse_ref(model)
    version = prediction_version(b, name, model_name, ref_version)
    if version is None:
        raise Problem(404, f"model {model_name!r} has no predictions of {name}",
                      f"run: sqlvision predict {model_name} --table {name}")
    q = b.quote_column
    tid, label = f"t.{q(table.id)}", f"t.{q(table.label)}"
    split = f"t.{q(table.split)}" if table.split else "NULL"
    reviewed = ""
    params: list[Any] = [name, model_name, version]
    if b.table_exists(AUDIT):
        reviewed = (f" AND NOT EXISTS (SELECT 1 FROM {b.quote(AUDIT)} a WHERE a.source_table = ? "
                    f"AND a.image_id = {tid})")
        params.append(name)
    base = (f"FROM {b.quote(name)} t JOIN {b.quote(PREDICTIONS)} p ON p.source_table = ? "
            f"AND p.model = ? AND p.model_version = ? AND p.image_id = {tid} "
            f"WHERE p.label IS NOT NULL{reviewed}")
    wrong = f"CASE WHEN {label} IS NULL OR p.label <> {label} THEN 1 ELSE 0 END"
    rows = b.query(f"SELECT {tid} AS id, {label} AS label, {split} AS split, p.label AS predicted, "
                   f"p.confidence AS confidence, p.top_k AS top_k, {wrong} AS misclassified {base} "
                   f"ORDER BY {wrong} DESC, p.confidence, {tid} LIMIT ?", [*params, limit]).to_pylist()
    remaining = int(b.scalar(f"SELECT count(*) {base}", params) or 0)
    classes = registry.load(b, model_name, version, weights=False).classes
    for r in rows:
        r["label"], r["top_k"] = table.label_of(r["label"]), parse_json(r["top_k"])
        r["misclassified"] = bool(r["misclassified"])
    return {"table": name, "model": f"{model_name}:{version}", "classes": classes,
            "remaining": remaining, "items": rows}


def relabel(db: Any, name: str, image_id: int, label: str, by: str) -> dict[str, Any]:
    """Set the row's label (the same label confirms it) and record who changed what, when."""
    b = db.backend
    table = image_table(b, name)
    if table.label is None:
        raise Problem(422, f"table {name!r} has no label column")
    if not b.table_exists(AUDIT):
        b.create_table(AUDIT, AUDIT_COLUMNS)
    q, qt = b.quote_column, b.quote(name)
    now = utcnow()
    with b.transaction():
        rows = b.query(f"SELECT {q(table.label)} FROM {qt} WHERE {q(table.id)} = ?", [image_id])
        if not rows.num_rows:
            raise Problem(404, f"no row with {table.id} = {image_id} in {name}")
        old = rows.column(0)[0].as_py()
        old = None if old is None else str(old)
        b.execute(f"UPDATE {qt} SET {q(table.label)} = ? WHERE {q(table.id)} = ?", [label, image_id])
        b.insert(AUDIT, pa.table({"source_table": [name], "image_id": [image_id], "old_label": [old],
                                  "new_label": [label], "changed_by": [by], "changed_at": [now]},
                                 schema=arrow_schema(AUDIT_COLUMNS)))
    return {"table": name, "id": image_id, "old_label": old, "label": label, "changed_by": by,
            "changed_at": now}
