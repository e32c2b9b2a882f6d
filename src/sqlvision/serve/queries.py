"""What the API reads from the database: tables and their counts, filtered image pages, one
image with its predictions from every model version, models with curves and evaluations, the
confusion matrix and mistakes from ``sv_predictions``. Each function takes the
:class:`~sqlvision.connection.Database` and runs on the database thread; identifiers are
quoted by the backend and every value is a parameter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlvision.db.base import Backend
from sqlvision.evaluate import EVALUATIONS
from sqlvision.explore import label_split_counts
from sqlvision.models import registry
from sqlvision.predict.batch import PREDICTIONS
from sqlvision.serve.problems import Problem
from sqlvision.tables import ImageTable
from sqlvision.train.runlog import RUNS

AUDIT = "sv_label_audit"
_OPTIONAL = ("width", "height", "format")
ORDERS = ("id", "-id", "confidence", "-confidence")


def parse_json(value: Any) -> Any:
    """A JSON column's value (text on most engines, already parsed on PostgreSQL)."""
    return json.loads(value) if isinstance(value, str) else value


def user_tables(backend: Backend) -> list[str]:
    """The user's tables: everything but the ``sv_`` catalog and the ``_predicted`` views."""
    return [t for t in backend.list_tables()
            if not t.lower().startswith("sv_") and not t.endswith("_predicted")]


def image_table(backend: Backend, name: str) -> ImageTable:
    """The image table ``name`` (404 unless it is one of the user's tables)."""
    if name not in user_tables(backend):
        raise Problem(404, f"table {name!r} not found", "list the tables at /v1/tables")
    return ImageTable.resolve(backend, name)


def list_tables(db: Any) -> list[dict[str, Any]]:
    """Each table with its row count and whether it has the image columns."""
    b = db.backend
    out = []
    for name in user_tables(b):
        columns = [c.lower() for c in b.table_columns(name)]
        rows = int(b.scalar(f"SELECT count(*) FROM {b.quote(name)}") or 0)
        out.append({"name": name, "rows": rows, "images": "id" in columns and "data" in columns})
    return out


def table_info(db: Any, name: str) -> dict[str, Any]:
    """Columns, row count and the counts per label x split."""
    b = db.backend
    table = image_table(b, name)
    counts = label_split_counts(b, table).to_pylist()
    splits = [c for c in (counts[0] if counts else {}) if c not in ("label", "total")]
    return {"name": name, "columns": b.table_columns(name),
            "rows": sum(int(r["total"]) for r in counts), "labels": [r["label"] for r in counts],
            "splits": splits, "counts": [{k: (int(v) if k != "label" else v) for k, v in r.items()}
                                         for r in counts]}


def prediction_version(b: Backend, source: str, name: str, version: int | None) -> int | None:
    """The version of ``name`` whose predictions of ``source`` to show: the one asked for, else
    the newest one that predicted this table (``None``: no predictions yet)."""
    registry.check_model_name(name)
    if version is not None:
        return version
    if not b.table_exists(PREDICTIONS):
        return None
    value = b.scalar(f"SELECT max(model_version) FROM {b.quote(PREDICTIONS)} "
                     "WHERE source_table = ? AND model = ?", [source, name])
    return None if value is None else int(value)


@dataclass(frozen=True)
class ImageFilter:
    """Which rows of an image table to list (see ``GET /v1/tables/{table}/images``)."""

    label: str | None = None
    split: str | None = None
    model: str | None = None
    version: int | None = None
    predicted: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    misclassified: bool = False
    order: str = "id"
    limit: int = 60
    offset: int = 0

    @property
    def needs_predictions(self) -> bool:
        """Whether a filter or the order looks at predictions."""
        return (self.predicted is not None or self.min_confidence is not None
                or self.max_confidence is not None or self.misclassified
                or self.order.endswith("confidence"))


class _Selection:
    """The FROM and WHERE of an image listing, with their parameters."""

    def __init__(self, b: Backend, table: ImageTable, f: ImageFilter) -> None:
        q = b.quote_column
        self.table, self.q = table, q
        self.id = f"t.{q(table.id)}"
        self.label = f"t.{q(table.label)}" if table.label else "NULL"
        self.split = f"t.{q(table.split)}" if table.split else "NULL"
        self.version = None
        if f.model is not None:
            name, ref_version = registry.parse_ref(f.model)
            self.model = name
            self.version = prediction_version(b, table.name, name, f.version or ref_version)
        has = self.version is not None
        if f.needs_predictions and f.model is None:
            raise Problem(422, "filtering or ordering by prediction needs a model",
                          "add model=NAME (or NAME:VERSION)")
        self.sql = f"FROM {b.quote(table.name)} t"
        self.params: list[Any] = []
        if has:
            self.sql += (f" LEFT JOIN {b.quote(PREDICTIONS)} p ON p.source_table = ? AND p.model = ? "
                         f"AND p.model_version = ? AND p.image_id = {self.id}")
            self.params += [table.name, self.model, self.version]
        clauses: list[str] = []
        for value, column in ((f.label, self.label), (f.split, self.split)):
            if value is not None:
                clauses.append(f"{column} = ?")
                self.params.append(value)
        predicted: list[tuple[Any, str]] = [
            (f.predicted, "p.label = ?"), (f.min_confidence, "p.confidence >= ?"),
            (f.max_confidence, "p.confidence <= ?")]
        for value, clause in predicted:
            if value is not None:
                clauses.append(clause if has else "1 = 0")
                self.params += [value] if has else []
        if f.misclassified:
            clauses.append(f"p.label IS NOT NULL AND {self.label} IS NOT NULL AND p.label <> {self.label}"
                           if has else "1 = 0")
        self.sql += " WHERE " + " AND ".join(clauses) if clauses else ""
        self.predicted = "p.label" if has else "NULL"
        self.confidence = "p.confidence" if has else "NULL"


def list_images(db: Any, name: str, f: ImageFilter) -> dict[str, Any]:
    """One page of rows: id, label, split, size, predicted label and confidence."""
    b = db.backend
    table = image_table(b, name)
    s = _Selection(b, table, f)
    have = {c.lower() for c in b.table_columns(name)}
    extra = "".join(f", t.{b.quote_column(c)} AS {c}" for c in _OPTIONAL if c in have)
    total = int(b.scalar(f"SELECT count(*) {s.sql}", s.params) or 0)
    key = s.confidence if f.order.endswith("confidence") else s.id
    direction = " DESC" if f.order.startswith("-") else ""
    order = (f"CASE WHEN {key} IS NULL THEN 1 ELSE 0 END, {key}{direction}, {s.id}"
             if key != s.id else f"{s.id}{direction}")
    rows = b.query(f"SELECT {s.id} AS id, {s.label} AS label, {s.split} AS split, "
                   f"{s.predicted} AS predicted, {s.confidence} AS confidence{extra} {s.sql} "
                   f"ORDER BY {order} LIMIT ? OFFSET ?", [*s.params, f.limit, f.offset]).to_pylist()
    for r in rows:
        r["label"] = table.label_of(r["label"])
    model = f"{s.model}:{s.version}" if s.version is not None else None
    return {"table": name, "total": total, "offset": f.offset, "limit": f.limit, "model": model,
            "items": rows}


def image_detail(db: Any, name: str, image_id: int) -> dict[str, Any]:
    """One row's metadata, its predictions by every model version and its label history."""
    b = db.backend
    table = image_table(b, name)
    have = [c for c in b.table_columns(name) if c.lower() not in (table.image.lower(),)]
    rows = b.query(f"SELECT {', '.join(b.quote_column(c) for c in have)} FROM {b.quote(name)} "
                   f"WHERE {b.quote_column(table.id)} = ?", [image_id]).to_pylist()
    if not rows:
        raise Problem(404, f"no row with {table.id} = {image_id} in {name}",
                      f"list the rows at /v1/tables/{name}/images")
    row = rows[0]
    predictions = []
    if b.table_exists(PREDICTIONS):
        predictions = b.query(
            f"SELECT model, model_version, label, confidence, top_k, error, predicted_at FROM "
            f"{b.quote(PREDICTIONS)} WHERE source_table = ? AND image_id = ? "
            "ORDER BY model, model_version DESC", [name, image_id]).to_pylist()
        for p in predictions:
            p["top_k"] = parse_json(p["top_k"])
    history = []
    if b.table_exists(AUDIT):
        history = b.query(f"SELECT old_label, new_label, changed_by, changed_at FROM {b.quote(AUDIT)} "
                          "WHERE source_table = ? AND image_id = ? ORDER BY changed_at DESC",
                          [name, image_id]).to_pylist()
    return {"table": name, "id": image_id, "label": table.label_of(row.get(table.label or "")),
            "row": row, "predictions": predictions, "label_history": history}


def image_data(db: Any, name: str, image_id: int) -> bytes:
    """The row's image bytes (read from its uri in reference mode)."""
    from sqlvision.explore import fetch_image

    return fetch_image(db.backend, image_table(db.backend, name), image_id)[0]


def list_models(db: Any) -> list[dict[str, Any]]:
    """One entry per model name: its versions and the newest one's summary."""
    by_name: dict[str, dict[str, Any]] = {}
    for r in registry.list_models(db.backend).to_pylist():
        metrics = parse_json(r.get("metrics")) or {}
        entry = by_name.setdefault(r["name"], {"name": r["name"], "versions": []})
        entry["versions"].append(int(r["version"]))
        entry.update(latest=int(r["version"]), architecture=r.get("architecture"),
                     classes=parse_json(r.get("classes")) or [], created_at=r.get("created_at"),
                     val_accuracy=metrics.get("val_accuracy"))
    return list(by_name.values())


def model_detail(db: Any, name: str, version: int | None) -> dict[str, Any]:
    """Classes, preprocessing, the ONNX input/output schema, metrics, lineage, training
    config, the versions, the training curves (``sv_runs``) and where it has predictions."""
    b = db.backend
    bundle = registry.load(b, name, version, weights=False)
    curves: list[dict[str, Any]] = []
    run_id = bundle.lineage.get("run_id")
    if run_id and b.table_exists(RUNS):
        curves = b.query(f"SELECT epoch, train_loss, train_accuracy, val_loss, val_accuracy, "
                         f"learning_rate FROM {b.quote(RUNS)} WHERE run_id = ? ORDER BY epoch",
                         [run_id]).to_pylist()
    versions = b.query(f"SELECT version FROM {b.quote(registry.MODELS)} WHERE name = ? ORDER BY version",
                       [name]).column(0).to_pylist()
    tables = []
    if b.table_exists(PREDICTIONS):
        tables = b.query(f"SELECT DISTINCT source_table FROM {b.quote(PREDICTIONS)} WHERE model = ? "
                         "ORDER BY source_table", [name]).column(0).to_pylist()
    return {"name": bundle.name, "version": bundle.version, "ref": bundle.ref,
            "architecture": bundle.architecture, "classes": bundle.classes,
            "preprocessing": bundle.spec.to_dict(), "schema": bundle.io_schema(),
            "metrics": bundle.metrics, "lineage": bundle.lineage, "config": bundle.config,
            "created_at": bundle.created_at, "versions": [int(v) for v in versions],
            "curves": curves, "predicted_tables": tables}


def evaluations(db: Any, name: str, version: int | None) -> list[dict[str, Any]]:
    """Stored evaluation reports of ``name`` (one version, or all), newest first."""
    b = db.backend
    registry.check_model_name(name)
    if not b.table_exists(EVALUATIONS):
        return []
    where, params = "model = ?", [name]
    if version is not None:
        where, params = "model = ? AND model_version = ?", [name, version]  # type: ignore[list-item]
    rows = b.query(f"SELECT * FROM {b.quote(EVALUATIONS)} WHERE {where} "
                   "ORDER BY evaluated_at DESC LIMIT 50", params).to_pylist()
    for r in rows:
        r["per_class"], r["confusion"] = parse_json(r["per_class"]), parse_json(r["confusion"])
    return rows


def _scored(b: Backend, name: str, version: int | None, table_name: str,
            split: str | None) -> tuple[ImageTable, int, str, list[Any]]:
    """The table, the version, and the FROM/WHERE of its labeled, predicted rows."""
    table = image_table(b, table_name)
    if table.label is None:
        raise Problem(422, f"table {table_name!r} has no label column")
    found = prediction_version(b, table_name, name, version)
    if found is None:
        raise Problem(404, f"model {name!r} has no predictions of {table_name}",
                      f"run: sqlvision predict {name} --table {table_name}")
    q = b.quote_column
    sql = (f"FROM {b.quote(table_name)} t JOIN {b.quote(PREDICTIONS)} p ON p.source_table = ? "
           f"AND p.model = ? AND p.model_version = ? AND p.image_id = t.{q(table.id)} "
           f"WHERE p.label IS NOT NULL AND t.{q(table.label)} IS NOT NULL")
    params: list[Any] = [table_name, name, found]
    if split is not None and table.split:
        sql += f" AND t.{q(table.split)} = ?"
        params.append(split)
    return table, found, sql, params


def confusion(db: Any, name: str, version: int | None, table_name: str,
              split: str | None) -> dict[str, Any]:
    """The confusion matrix of a model version's stored predictions against the table's
    current labels (so a relabel shows at once); rows true, columns predicted."""
    b = db.backend
    table, found, sql, params = _scored(b, name, version, table_name, split)
    truth = f"t.{b.quote_column(table.label or 'label')}"
    rows = b.query(f"SELECT {truth} AS truth, p.label AS predicted, count(*) AS n {sql} "
                   f"GROUP BY {truth}, p.label", params).to_pylist()
    bundle_classes = registry.load(b, name, found, weights=False).classes
    seen = sorted({str(table.label_of(r["truth"])) for r in rows} | {r["predicted"] for r in rows})
    classes = list(bundle_classes) + [c for c in seen if c not in bundle_classes]
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for r in rows:
        matrix[index[str(table.label_of(r["truth"]))]][index[r["predicted"]]] += int(r["n"])
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(classes)))
    return {"model": f"{name}:{found}", "table": table_name, "split": split, "classes": classes,
            "matrix": matrix, "rows": total, "accuracy": correct / total if total else None}


def mistakes(db: Any, name: str, version: int | None, table_name: str, split: str | None,
             limit: int) -> dict[str, Any]:
    """The most confident wrong predictions."""
    b = db.backend
    table, found, sql, params = _scored(b, name, version, table_name, split)
    q = b.quote_column
    label = f"t.{q(table.label or 'label')}"
    rows = b.query(f"SELECT t.{q(table.id)} AS id, {label} AS label, p.label AS predicted, "
                   f"p.confidence AS confidence {sql} AND p.label <> {label} "
                   f"ORDER BY p.confidence DESC, t.{q(table.id)} LIMIT ?", [*params, limit]).to_pylist()
    return {"model": f"{name}:{found}", "table": table_name, "items": rows}
