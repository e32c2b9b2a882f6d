"""SQL functions: ``predict``, ``predict_topk`` and ``embed`` inside DuckDB and SQLite queries.

DuckDB gets vectorized Arrow UDFs (a chunk of up to 2,048 rows per call, decoded and scored in
batches on one thread per core) with struct and list results; SQLite gets row functions
returning JSON, plus a rewrite of ``predict(...).label`` and ``unnest(...)`` into SQLite's JSON functions.
Models are loaded once per connection and reloaded only when a newer version is registered.

The image argument is the image bytes, or a path or URI (reference-mode rows: pass ``uri``).
A row whose image does not decode costs only itself: ``predict`` gives it a NULL label and
confidence and the reason in ``error``; ``predict_topk`` and ``embed`` give NULL.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.runtime import OnnxClassifier, load_classifier
from sqlvision.predict.batch import top_k_entries
from sqlvision.predict.stream import score_rows

FUNCTION_CALL = re.compile(r"\b(predict|predict_topk|embed)\s*\(\s*'((?:[^']|'')*)'", re.IGNORECASE)
_PREDICT_TYPE = "STRUCT(label VARCHAR, confidence DOUBLE, error VARCHAR)"
_TOPK_TYPE = "STRUCT(label VARCHAR, probability DOUBLE)[]"


def models_in(sql: str) -> list[str]:
    """Model references given as literals to the SQL functions in ``sql``."""
    return sorted({m.group(2).replace("''", "'") for m in FUNCTION_CALL.finditer(sql)})


def image_source(value: bytes | str) -> tuple[bytes | None, str | None]:
    """``(data, uri)`` of an image argument: image bytes as they are, or a path/URI to read
    (given as text, or as short bytes that are a path rather than an image)."""
    if isinstance(value, str):
        return None, value
    if len(value) < 4096 and not value.startswith((b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF",
                                                   b"II*\x00", b"MM\x00*")):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return value, None
        if text and "\x00" not in text and ("/" in text or "://" in text or "." in text):
            return None, text
    return value, None


class ModelCache:
    """Classifiers by model reference, loaded before a query runs (never from inside one)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.loaded: dict[str, OnnxClassifier] = {}
        self.lock = threading.Lock()

    def refresh(self, refs: Sequence[str]) -> None:
        """Load each reference, or the newer version of a name registered since the last load."""
        for ref in refs:
            name, version = registry.parse_ref(ref)
            current = self.loaded.get(ref)
            if current is not None and version is not None:
                continue
            if current is not None:
                latest = self.backend.scalar(
                    f"SELECT max(version) FROM {self.backend.quote(registry.MODELS)} WHERE name = ?",
                    [name])
                if latest == current.bundle.version:
                    continue
            self.loaded[ref] = load_classifier(registry.load(self.backend, name, version,
                                                             weights=False))

    def get(self, ref: str) -> OnnxClassifier:
        classifier = self.loaded.get(ref)
        if classifier is None:
            raise SqlvisionError(f"model {ref!r} is not loaded for SQL",
                                 "give the model name as a string literal: predict('name', data)")
        return classifier


def _score(classifier: OnnxClassifier, images: list[Any], features: bool
           ) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Outputs for the images that decode, their row positions, and why the others failed."""
    rows = ((i, *image_source(value)) for i, value in enumerate(images) if value is not None)
    groups = list(score_rows(classifier, rows, features=features, group_rows=len(images) + 1))
    if not groups:
        return np.zeros((0, 0)), [], {}
    failed = dict(groups[0].failed)
    if not groups[0].keys:
        return np.zeros((0, 0)), [], failed
    return groups[0].outputs, groups[0].keys, failed


def _by_model(models: list[Any]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, ref in enumerate(models):
        if ref is not None:
            groups.setdefault(ref, []).append(i)
    return groups


def predict_values(cache: ModelCache, models: list[Any], images: list[Any]) -> list[Any]:
    """``{label, confidence, error}`` per row (``None`` for NULL images; label and confidence
    ``None`` and the reason in ``error`` for images that do not decode)."""
    out: list[Any] = [None] * len(images)
    for ref, rows in _by_model(models).items():
        classifier = cache.get(ref)
        probs, good, failed = _score(classifier, [images[i] for i in rows], features=False)
        for j, p in zip(good, probs, strict=True):
            best = int(p.argmax())
            out[rows[j]] = {"label": classifier.classes[best], "confidence": float(p[best]),
                            "error": None}
        for j, reason in failed.items():
            out[rows[j]] = {"label": None, "confidence": None, "error": reason}
    return out


def topk_values(cache: ModelCache, models: list[Any], images: list[Any], ks: list[Any],
                min_probs: list[Any]) -> list[Any]:
    """``[{label, probability}, ...]`` per row: the k most probable classes above min_prob."""
    out: list[Any] = [None] * len(images)
    for ref, rows in _by_model(models).items():
        classifier = cache.get(ref)
        probs, good, _ = _score(classifier, [images[i] for i in rows], features=False)
        for j, p in zip(good, probs, strict=True):
            r = rows[j]
            k = int(ks[r] if ks[r] is not None else 5)
            out[r] = top_k_entries(classifier.classes, p[None], k, float(min_probs[r] or 0.0))[0]
    return out


def embed_values(cache: ModelCache, models: list[Any], images: list[Any]) -> list[Any]:
    """The penultimate-layer vector per row."""
    out: list[Any] = [None] * len(images)
    for ref, rows in _by_model(models).items():
        vectors, good, _ = _score(cache.get(ref), [images[i] for i in rows], features=True)
        for j, v in zip(good, vectors, strict=True):
            out[rows[j]] = v.tolist()
    return out


def register_duckdb(con: Any, cache: ModelCache) -> None:
    """Vectorized Arrow UDFs plus macros with the public names and defaults."""
    import pyarrow as pa

    predict_type = pa.struct([("label", pa.string()), ("confidence", pa.float64()),
                              ("error", pa.string())])
    topk_type = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))

    def sv_predict(models: Any, images: Any) -> Any:
        return pa.array(predict_values(cache, models.to_pylist(), images.to_pylist()), predict_type)

    def sv_predict_topk(models: Any, images: Any, ks: Any, min_probs: Any) -> Any:
        values = topk_values(cache, models.to_pylist(), images.to_pylist(), ks.to_pylist(),
                             min_probs.to_pylist())
        return pa.array(values, topk_type)

    def sv_embed(models: Any, images: Any) -> Any:
        return pa.array(embed_values(cache, models.to_pylist(), images.to_pylist()),
                        pa.list_(pa.float32()))

    for name, func, params, result in (
        ("sv_predict", sv_predict, ["VARCHAR", "BLOB"], _PREDICT_TYPE),
        ("sv_predict_topk", sv_predict_topk, ["VARCHAR", "BLOB", "INTEGER", "DOUBLE"], _TOPK_TYPE),
        ("sv_embed", sv_embed, ["VARCHAR", "BLOB"], "FLOAT[]"),
    ):
        with contextlib.suppress(Exception):  # not registered yet on this connection
            con.remove_function(name)
        # special: a NULL out for a row whose image is not NULL (it did not decode) is allowed
        con.create_function(name, func, params, result, type="arrow", side_effects=False,
                            null_handling="special")
    con.execute("CREATE OR REPLACE TEMP MACRO predict(model, image) AS sv_predict(model, image::BLOB)")
    con.execute("CREATE OR REPLACE TEMP MACRO predict_topk(model, image, k) AS "
                "sv_predict_topk(model, image::BLOB, k, 0.0), (model, image, k, min_prob) AS "
                "sv_predict_topk(model, image::BLOB, k, min_prob)")
    con.execute("CREATE OR REPLACE TEMP MACRO embed(model, image) AS sv_embed(model, image::BLOB)")


def register_sqlite(con: Any, cache: ModelCache) -> None:
    """Row functions returning JSON text (SQLite has no struct or list types)."""
    def one(func: Any) -> Any:
        def wrapper(*args: Any) -> str | None:
            value = func(*args)
            return None if value is None else json.dumps(value)
        return wrapper

    con.create_function("predict", 2, one(lambda m, img: predict_values(cache, [m], [img])[0]))
    con.create_function("predict_topk", 3,
                        one(lambda m, img, k: topk_values(cache, [m], [img], [k], [0.0])[0]))
    con.create_function("predict_topk", 4, one(
        lambda m, img, k, p: topk_values(cache, [m], [img], [k], [p])[0]))
    con.create_function("embed", 2, one(lambda m, img: embed_values(cache, [m], [img])[0]))

