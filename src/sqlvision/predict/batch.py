"""Batch prediction: a table's rows through a registered model into ``sv_predictions``.

Incremental (rows already predicted by the same model version are skipped), atomic per batch
(a killed run leaves whole batches; rerunning completes it with exactly one prediction per row
and version), optional write-back into the source table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sqlvision.catalog import utcnow
from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.bundle import ModelBundle
from sqlvision.models.runtime import load_classifier
from sqlvision.parallel import BackgroundWriter
from sqlvision.predict.stream import score_rows, table_rows
from sqlvision.predict.view import create_predicted_view, predicted_view_name
from sqlvision.progress import progress_bar
from sqlvision.tables import ImageTable

PREDICTIONS = "sv_predictions"
PREDICTION_COLUMNS = (
    Column("source_table", "key", not_null=True),
    Column("image_id", "bigint", not_null=True),
    Column("model", "key", not_null=True),
    Column("model_version", "int", not_null=True),
    Column("label", "text"),
    Column("confidence", "double"),
    Column("top_k", "json"),
    Column("error", "text"),
    Column("predicted_at", "timestamp"),
)
PREDICTION_KEY = ("source_table", "image_id", "model", "model_version")
WRITE_BACK = (Column("predicted_label", "text"), Column("confidence", "double"),
              Column("predicted_at", "timestamp"))


@dataclass
class PredictReport:
    """What a prediction run did."""

    table: str
    model: str
    predicted: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    already: int = 0
    seconds: float = 0.0
    view: str | None = None

    def summary(self) -> str:
        """One line for the CLI."""
        rate = self.predicted / self.seconds if self.seconds else 0.0
        text = (f"{self.model} on {self.table}: {self.predicted} predicted "
                f"({rate:,.0f} images/s), {self.already} already predicted")
        if self.failed:
            text += f"; {len(self.failed)} could not be decoded (label NULL, reason in error)"
        if self.view:
            text += f"; in SQL: SELECT * FROM {self.view}"
        return text


def ensure_predictions_table(backend: Backend) -> None:
    """Create ``sv_predictions`` (one row per source row and model version) if needed."""
    if not backend.table_exists(PREDICTIONS):
        backend.create_table(PREDICTIONS, PREDICTION_COLUMNS, primary_key=PREDICTION_KEY)


def top_k_entries(classes: list[str], probs: np.ndarray, k: int,
                  min_prob: float = 0.0) -> list[list[dict[str, Any]]]:
    """Per row, the ``k`` most probable classes with probability >= ``min_prob``."""
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[{"label": classes[j], "probability": float(row[j])} for j in idx if row[j] >= min_prob]
            for row, idx in zip(probs, order, strict=True)]


def check_integer_ids(backend: Backend, table: ImageTable) -> None:
    """``sv_predictions.image_id`` is an integer: refuse other id types with the fix."""
    sample = backend.query(f"SELECT {backend.quote_column(table.id)} FROM {backend.quote(table.name)} "
                           "LIMIT 1")
    if sample.num_rows and not pa.types.is_integer(sample.schema.field(0).type):
        raise SqlvisionError(f"column {table.id!r} of {table.name} is not an integer",
                             "name an integer id column with --id-col")


def predict_table(backend: Backend, model: str, table: ImageTable, *, where: str | None = None,
                  version: int | None = None, top_k: int = 5, min_prob: float = 0.0,
                  recompute: bool = False, into_columns: bool = False,
                  engine: str = "onnxruntime", device: str | None = None, batch_size: int | None = None,
                  workers: int | None = None, progress: bool | None = None,
                  bundle: ModelBundle | None = None, cluster: Any = None,
                  log: Any = print) -> PredictReport:
    """Predict every selected row not yet predicted by this model version; see the module doc.

    ``batch_size``: images per inference call (default: the engine's, small on a CPU).
    ``cluster``: run on a Dask cluster (``local``, ``local:N``, ``tcp://HOST:PORT`` or a
    ``distributed.Client``; see :mod:`sqlvision.predict.cluster`).
    """
    started = time.perf_counter()
    if cluster is not None:
        from sqlvision.predict.cluster import check_cluster_engine

        check_cluster_engine(engine, device)
    if bundle is not None:
        assert bundle.version is not None
        name, number = bundle.name, bundle.version
    else:
        name, ref_version = registry.parse_ref(model)
        number = registry.resolve_version(backend, name, version or ref_version)
    check_integer_ids(backend, table)
    predicted_view_name(backend, table.name)  # a name too long for a view fails before any work
    ensure_predictions_table(backend)
    q, qt = backend.quote_column, backend.quote(table.name)
    key = (table.name, name, number)
    condition = f"({where})" if where else "1 = 1"
    if recompute:
        with backend.transaction():
            backend.execute(
                f"DELETE FROM {backend.quote(PREDICTIONS)} WHERE source_table = ? AND model = ? "
                f"AND model_version = ? AND image_id IN (SELECT {q(table.id)} FROM {qt} "
                f"WHERE {condition})", key)
    pending = (f"{condition} AND NOT EXISTS (SELECT 1 FROM {backend.quote(PREDICTIONS)} p "
               f"WHERE p.source_table = ? AND p.model = ? AND p.model_version = ? "
               f"AND p.image_id = {qt}.{q(table.id)})")
    report = PredictReport(table.name, f"{name}:{number}")
    total = int(backend.scalar(f"SELECT count(*) FROM {qt} WHERE {condition}") or 0)
    todo = int(backend.scalar(f"SELECT count(*) FROM {qt} WHERE {pending}", key) or 0)
    report.already = total - todo
    if todo:  # the model is read and its session built only when there is work
        bundle = bundle or registry.load(backend, name, number, weights=engine == "torch")
        _predict_pending(backend, table, bundle, pending, key, report, todo, engine=engine,
                         device=device, top_k=top_k, min_prob=min_prob, batch_size=batch_size,
                         workers=workers, progress=progress, cluster=cluster, log=log)
    if into_columns:
        write_back(backend, table, name, number, where)
    report.view = create_predicted_view(backend, table, PREDICTIONS)
    report.seconds = time.perf_counter() - started
    return report


def _predict_pending(backend: Backend, table: ImageTable, bundle: ModelBundle, pending: str,
                     key: tuple[Any, ...], report: PredictReport, todo: int, *, engine: str,
                     device: str | None, top_k: int, min_prob: float, batch_size: int | None,
                     workers: int | None, progress: bool | None, cluster: Any,
                     log: Any) -> None:
    """Score the ``todo`` pending rows here or on ``cluster``, with a progress bar."""
    bar = progress_bar(todo, f"predict {bundle.ref}", enabled=progress)
    if cluster is not None:
        from sqlvision.predict.cluster import on_cluster

        def writer(keys: list[Any], probs: np.ndarray, failed: list[tuple[Any, str]]) -> None:
            write_predictions(backend, table.name, bundle, keys, probs, failed, top_k, min_prob)

        with bar:
            outcome = on_cluster(backend, cluster, "predict", table, bundle, pending, key, writer,
                                 bar, top_k=top_k, min_prob=min_prob, log=log)
        report.predicted, report.failed = outcome.done, outcome.failed
        return
    # the session is built here only: on a cluster each worker builds its own
    _predict_here(backend, table, bundle, load_classifier(bundle, engine, device), pending,
                  key, report, bar, top_k=top_k, min_prob=min_prob, batch_size=batch_size,
                  workers=workers)


def _predict_here(backend: Backend, table: ImageTable, bundle: ModelBundle, classifier: Any,
                  pending: str, key: tuple[Any, ...], report: PredictReport, bar: Any, *,
                  top_k: int, min_prob: float, batch_size: int | None,
                  workers: int | None) -> None:
    """Predict the pending rows in this process (decode and score on a thread per core)."""
    q, qt = backend.quote_column, backend.quote(table.name)
    uri = q(table.uri) if table.uri else "NULL"
    rows = table_rows(backend, f"SELECT {q(table.id)}, {q(table.image)}, {uri} FROM {qt} "
                               f"WHERE {pending}", key)
    groups = score_rows(classifier, rows, batch_size=batch_size, workers=workers)
    # Group N commits on the writer thread while group N+1 is scored; each its own transaction.
    with BackgroundWriter(depth=1) as writer:
        try:
            for group in groups:
                writer.submit(write_predictions, backend, table.name, bundle, group.keys,
                              group.outputs, group.failed, top_k, min_prob)
                report.predicted += len(group.keys)
                report.failed.extend(group.failed)
                bar.update(group.rows)
            writer.drain()
        finally:
            bar.close()


def write_predictions(backend: Backend, source: str, bundle: ModelBundle, keys: list[Any],
                      probs: np.ndarray, failed: list[tuple[Any, str]], top_k: int,
                      min_prob: float) -> None:
    """Insert one batch of predictions (and failures, label NULL) in one transaction."""
    now = utcnow()
    classes = bundle.classes
    best = probs.argmax(axis=1) if len(keys) else np.zeros(0, int)
    tops = top_k_entries(classes, probs, top_k, min_prob) if len(keys) else []
    n, m = len(keys), len(failed)
    data = {
        "source_table": [source] * (n + m),
        "image_id": [int(k) for k in keys] + [int(k) for k, _ in failed],
        "model": [bundle.name] * (n + m),
        "model_version": [bundle.version] * (n + m),
        "label": [classes[i] for i in best] + [None] * m,
        "confidence": [float(probs[r, i]) for r, i in enumerate(best)] + [None] * m,
        "top_k": [json.dumps(t) for t in tops] + [None] * m,
        "error": [None] * n + [reason for _, reason in failed],
        "predicted_at": [now] * (n + m),
    }
    with backend.transaction():
        backend.insert(PREDICTIONS, pa.table(data, schema=arrow_schema(PREDICTION_COLUMNS)))


def write_back(backend: Backend, table: ImageTable, model: str, version: int,
               where: str | None) -> None:
    """Copy this version's predictions into ``predicted_label``, ``confidence`` and
    ``predicted_at`` columns of the source table (added if missing), in one UPDATE join."""
    have = {c.lower() for c in backend.table_columns(table.name)}
    for column in WRITE_BACK:
        if column.name not in have:
            backend.add_column(table.name, column)
    q, qt = backend.quote_column, backend.quote(table.name)
    # The filter runs in a subquery of its own, so its column names cannot clash with the
    # predictions table's (label, confidence).
    condition = f" AND {qt}.{q(table.id)} IN (SELECT {q(table.id)} FROM {qt} WHERE {where})" if where else ""
    with backend.transaction():
        backend.update_join(
            table.name, table.id, PREDICTIONS, "image_id",
            {"predicted_label": "label", "confidence": "confidence", "predicted_at": "predicted_at"},
            "s.source_table = ? AND s.model = ? AND s.model_version = ?" + condition,
            [table.name, model, version])
