"""SQL functions: ``predict``, ``predict_topk``, ``ml_predict`` and ``embed`` inside DuckDB and
SQLite queries, described engine-neutrally (:class:`sqlvision.db.functions.SqlFunction`) and
installed by the backend: DuckDB runs them vectorized (a chunk of up to 2,048 rows per call,
decoded and scored in batches on one thread per core) with struct and list results; SQLite row
by row with JSON results. ``ml_predict`` is what ``ML.PREDICT`` uses: label, confidence, error
and top-k from one pass. Models are loaded once per connection and reloaded only when a newer
version is registered.

The image argument is the image bytes, or a path or URI (reference-mode rows: pass ``uri``).
A row whose image does not decode costs only itself: ``predict`` gives it a NULL label and
confidence and the reason in ``error``; ``predict_topk`` and ``embed`` give NULL.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sqlvision.db.base import Backend
from sqlvision.db.functions import SqlFunction
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.runtime import OnnxClassifier, load_classifier
from sqlvision.predict.batch import top_k_entries
from sqlvision.predict.stream import score_rows

FUNCTION_CALL = re.compile(r"\b(predict|predict_topk|ml_predict|embed)\s*\(\s*'((?:[^']|'')*)'",
                           re.IGNORECASE)


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
            if current is not None and registry.resolve_version(self.backend, name) == \
                    current.bundle.version:
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


def scored_values(cache: ModelCache, models: list[Any], images: list[Any], ks: list[Any],
                  min_probs: list[Any]) -> list[Any]:
    """``{label, confidence, error, top_k}`` per row (``None`` for NULL images; label,
    confidence and top_k ``None`` and the reason in ``error`` for images that do not decode).
    ``top_k``: the k most probable classes (5 where k is NULL) with probability >= min_prob."""
    out: list[Any] = [None] * len(images)
    for ref, rows in _by_model(models).items():
        classifier = cache.get(ref)
        probs, good, failed = _score(classifier, [images[i] for i in rows], features=False)
        for j, p in zip(good, probs, strict=True):
            r = rows[j]
            best = int(p.argmax())
            k = int(ks[r] if ks[r] is not None else 5)
            top = top_k_entries(classifier.classes, p[None], k, float(min_probs[r] or 0.0))[0]
            out[r] = {"label": classifier.classes[best], "confidence": float(p[best]),
                      "error": None, "top_k": top}
        for j, reason in failed.items():
            out[rows[j]] = {"label": None, "confidence": None, "error": reason, "top_k": None}
    return out


def embed_values(cache: ModelCache, models: list[Any], images: list[Any]) -> list[Any]:
    """The penultimate-layer vector per row."""
    out: list[Any] = [None] * len(images)
    for ref, rows in _by_model(models).items():
        vectors, good, _ = _score(cache.get(ref), [images[i] for i in rows], features=True)
        for j, v in zip(good, vectors, strict=True):
            out[rows[j]] = v.tolist()
    return out


def _fields(values: list[Any], names: tuple[str, ...]) -> list[Any]:
    return [None if v is None else {n: v[n] for n in names} for v in values]


def sql_functions(cache: ModelCache) -> list[SqlFunction]:
    """The SQL functions over the models of ``cache``, for :meth:`Backend.install_functions`."""
    entry = pa.struct([("label", pa.string()), ("probability", pa.float64())])
    prediction = [("label", pa.string()), ("confidence", pa.float64()), ("error", pa.string())]
    image = (("model", "text"), ("image", "blob"))
    topk = (*image, ("k", "int"), ("min_prob", "double"))

    def predict(columns: list[list[Any]]) -> list[Any]:
        n = len(columns[1])
        return _fields(scored_values(cache, columns[0], columns[1], [1] * n, [0.0] * n),
                       ("label", "confidence", "error"))

    def predict_topk(columns: list[list[Any]]) -> list[Any]:
        values = scored_values(cache, *columns)
        return [None if v is None else v["top_k"] for v in values]

    return [
        SqlFunction("predict", image, pa.struct(prediction), predict),
        SqlFunction("predict_topk", topk, pa.list_(entry), predict_topk, defaults=(0.0,)),
        SqlFunction("ml_predict", topk, pa.struct([*prediction, ("top_k", pa.list_(entry))]),
                    lambda columns: scored_values(cache, *columns), defaults=(5, 0.0)),
        SqlFunction("embed", image, pa.list_(pa.float32()),
                    lambda columns: embed_values(cache, *columns)),
    ]
