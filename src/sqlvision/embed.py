"""Embeddings: penultimate-layer vectors in ``sv_embeddings`` and cosine similarity search.
Classical models fitted on them live in :mod:`sqlvision.train.logistic`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sqlvision.catalog import utcnow
from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.bundle import ModelBundle
from sqlvision.models.runtime import load_classifier
from sqlvision.predict.batch import check_integer_ids
from sqlvision.predict.stream import decode_one, score_rows, table_rows
from sqlvision.progress import progress_bar
from sqlvision.storage import read_bytes
from sqlvision.tables import ImageTable

EMBEDDINGS = "sv_embeddings"
EMBEDDING_COLUMNS = (
    Column("source_table", "key", not_null=True),
    Column("image_id", "bigint", not_null=True),
    Column("model", "key", not_null=True),
    Column("model_version", "int", not_null=True),
    Column("dim", "int"),
    Column("embedding", "vector"),
    Column("embedded_at", "timestamp"),
)


@dataclass
class EmbedReport:
    """What an embedding run did."""

    table: str
    model: str
    embedded: int = 0
    already: int = 0
    failed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the CLI."""
        text = f"{self.model} on {self.table}: {self.embedded} embedded, {self.already} already there"
        return text + (f", {self.failed} could not be decoded" if self.failed else "")


def embed_table(backend: Backend, model: str, table: ImageTable, *, where: str | None = None,
                version: int | None = None, recompute: bool = False, engine: str = "onnxruntime",
                batch_size: int | None = None, workers: int | None = None,
                progress: bool | None = None, cluster: Any = None,
                log: Any = print) -> EmbedReport:
    """Store the vectors of every selected row not yet embedded by this model version
    (``cluster``: on a Dask cluster, see :mod:`sqlvision.predict.cluster`)."""
    started = time.perf_counter()
    if cluster is not None:
        from sqlvision.predict.cluster import check_cluster_engine

        check_cluster_engine(engine, None)
    name, ref_version = registry.parse_ref(model)
    number = registry.resolve_version(backend, name, version or ref_version)
    check_integer_ids(backend, table)
    if not backend.table_exists(EMBEDDINGS):
        backend.create_table(EMBEDDINGS, EMBEDDING_COLUMNS,
                             primary_key=("source_table", "image_id", "model", "model_version"))
    q, qt = backend.quote_column, backend.quote(table.name)
    key = [table.name, name, number]
    condition = f"({where})" if where else "1 = 1"
    if recompute:
        with backend.transaction():
            backend.execute(f"DELETE FROM {backend.quote(EMBEDDINGS)} WHERE source_table = ? AND "
                            "model = ? AND model_version = ?", key)
    pending = (f"{condition} AND NOT EXISTS (SELECT 1 FROM {backend.quote(EMBEDDINGS)} e WHERE "
               "e.source_table = ? AND e.model = ? AND e.model_version = ? "
               f"AND e.image_id = {qt}.{q(table.id)})")
    report = EmbedReport(table.name, f"{name}:{number}")
    todo = int(backend.scalar(f"SELECT count(*) FROM {qt} WHERE {pending}", key) or 0)
    report.already = int(backend.scalar(f"SELECT count(*) FROM {qt} WHERE {condition}") or 0) - todo
    if not todo:  # the model is read and its session built only when there is work
        report.seconds = time.perf_counter() - started
        return report
    bundle = registry.load(backend, name, number, weights=engine == "torch")
    classifier = load_classifier(bundle, engine)
    if not classifier.has_features:
        raise SqlvisionError(f"model {bundle.ref} has no feature output",
                             "embed with a model sqlvision trained")
    bar = progress_bar(todo, f"embed {bundle.ref}", enabled=progress)
    if cluster is not None:
        from sqlvision.predict.cluster import on_cluster

        def writer(keys: list[Any], vectors: np.ndarray, _failed: Any) -> None:
            write_embeddings(backend, table.name, bundle, keys, vectors)

        outcome = on_cluster(backend, cluster, "embed", table, bundle, pending, key, writer, bar,
                             log=log)
        report.embedded, report.failed = outcome.done, len(outcome.failed)
        report.seconds = time.perf_counter() - started
        return report
    uri = q(table.uri) if table.uri else "NULL"
    rows = table_rows(backend, f"SELECT {q(table.id)}, {q(table.image)}, {uri} FROM {qt} "
                               f"WHERE {pending}", key)
    try:
        for group in score_rows(classifier, rows, features=True, batch_size=batch_size,
                                workers=workers):
            report.failed += len(group.failed)
            bar.update(group.rows)
            if not group.keys:
                continue
            write_embeddings(backend, table.name, bundle, group.keys, group.outputs)
            report.embedded += len(group.keys)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def write_embeddings(backend: Backend, source: str, bundle: ModelBundle, keys: list[Any],
                     vectors: np.ndarray) -> None:
    """Insert one batch of vectors in one transaction."""
    if not keys:
        return
    n = len(keys)
    data = pa.table({
        "source_table": [source] * n, "image_id": [int(k) for k in keys],
        "model": [bundle.name] * n, "model_version": [bundle.version] * n,
        "dim": [int(vectors.shape[1])] * n, "embedding": [v.tolist() for v in vectors],
        "embedded_at": [utcnow()] * n}, schema=arrow_schema(EMBEDDING_COLUMNS))
    with backend.transaction():
        backend.insert(EMBEDDINGS, data)


def load_embeddings(backend: Backend, bundle: ModelBundle, table: str,
                    ids: list[Any] | None = None) -> tuple[list[int], np.ndarray]:
    """``(image ids, N x D matrix)`` of a table's stored vectors for one model version."""
    keys: list[int] = []
    vectors: list[np.ndarray] = []
    sql = (f"SELECT image_id, embedding FROM {backend.quote(EMBEDDINGS)} WHERE source_table = ? "
           "AND model = ? AND model_version = ? ORDER BY image_id")
    wanted = set(ids) if ids is not None else None
    for batch in backend.stream(sql, [table, bundle.name, bundle.version], batch_rows=4096):
        for key, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            if wanted is None or key in wanted:
                keys.append(key)
                vectors.append(backend.read_vector(value))
    return keys, (np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))


def similar(backend: Backend, model: str, table: ImageTable, image: str | bytes, k: int = 5,
            progress: bool | None = None) -> pa.Table:
    """The ``k`` rows of ``table`` most similar (cosine) to ``image`` (a path, URI or bytes).

    Rows not embedded yet are embedded first (incrementally).
    """
    data = image if isinstance(image, bytes) else read_bytes(image, "check the path of the query "
                                                                    "image (--image)")
    name, version = registry.parse_ref(model)
    embed_table(backend, model, table, version=version, progress=progress)
    bundle = registry.load(backend, name, version)
    _, pixels, reason = decode_one(bundle.spec, "query", data, None)
    if pixels is None:
        raise SqlvisionError(f"the query image cannot be used: {reason}", "give a valid image")
    query = load_classifier(bundle).embed(pixels[None])[0]
    filters = {"source_table": table.name, "model": bundle.name, "model_version": bundle.version}
    found = backend.nearest(EMBEDDINGS, filters, query, k)
    ids, scores = found if found is not None else nearest_by_scan(backend, bundle, table.name,
                                                                   query, k)
    if not ids:
        raise SqlvisionError(f"no embeddings for {table.name}", "check the table has decodable images")
    q = backend.quote_column
    extra = ", ".join(q(c) for c in (table.label, table.uri) if c)
    marks = ", ".join("?" for _ in ids)
    rows = backend.query(f"SELECT {q(table.id)}{', ' + extra if extra else ''} FROM "
                         f"{backend.quote(table.name)} WHERE {q(table.id)} IN ({marks})", ids)
    by_id = {r[table.id]: r for r in rows.to_pylist()}
    out = [{"id": i, "similarity": float(s),
            **{c: by_id.get(i, {}).get(c) for c in (table.label, table.uri) if c}}
           for i, s in zip(ids, scores, strict=True)]
    return pa.Table.from_pylist(out)


def nearest_by_scan(backend: Backend, bundle: ModelBundle, table: str, query: np.ndarray,
                    k: int) -> tuple[list[Any], list[float]]:
    """Exact cosine top-k over every stored embedding, in NumPy (any engine)."""
    keys, matrix = load_embeddings(backend, bundle, table)
    if not keys:
        return [], []
    norms = np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    scores = matrix @ query / np.maximum(norms, 1e-12)
    top = np.argsort(-scores)[:k]
    return [keys[i] for i in top], [float(scores[i]) for i in top]
