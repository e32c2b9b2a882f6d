"""The model registry: versioned bundles in the ``sv_models`` table of the user's database."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa

from sqlvision.catalog import as_datetime, utcnow
from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.errors import SqlvisionError
from sqlvision.models.bundle import ModelBundle
from sqlvision.preprocess import PreprocessSpec

MODELS = "sv_models"
MODEL_COLUMNS = (
    Column("name", "key", not_null=True),
    Column("version", "int", not_null=True),
    Column("architecture", "text"),
    Column("classes", "json"),
    Column("preprocessing", "json"),
    Column("metrics", "json"),
    Column("config", "json"),
    Column("lineage", "json"),
    Column("onnx", "blob"),
    Column("weights", "blob"),
    Column("created_at", "timestamp"),
)
_SUMMARY = "name, version, architecture, classes, metrics, created_at"
# Model bytes over a server's statement limit (MariaDB's max_allowed_packet) go in parts.
PARTS = "sv_model_parts"
PART_COLUMNS = (
    Column("name", "key", not_null=True),
    Column("version", "int", not_null=True),
    Column("part", "key", not_null=True),
    Column("seq", "int", not_null=True),
    Column("data", "blob"),
)
PART_BYTES = 1 << 20


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_model_name(name: str) -> str:
    """The one rule for model names: letters, digits, ``.``, ``_`` and ``-``, starting with a
    letter or digit, at most 128 characters. So a name is always a reference (no ``:``), a
    single folder under the checkpoint directory (no ``/``, no ``..``) and an SQL string."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise SqlvisionError(f"bad model name {name!r}",
                             "use letters, digits, '.', '_' and '-' (starting with a letter or "
                             "digit, at most 128 characters), e.g. clothes-v2")
    return name


def ensure_models_table(backend: Backend) -> None:
    """Create ``sv_models`` if needed."""
    if not backend.table_exists(MODELS):
        backend.create_table(MODELS, MODEL_COLUMNS, primary_key=("name", "version"))


def save(backend: Backend, bundle: ModelBundle) -> ModelBundle:
    """Store ``bundle`` as the next version of its name; returns it with version and timestamp."""
    check_model_name(bundle.name)
    ensure_models_table(backend)
    with backend.transaction():
        latest = backend.scalar(f"SELECT max(version) FROM {backend.quote(MODELS)} WHERE name = ?",
                                [bundle.name])
        bundle.version = int(latest or 0) + 1
        bundle.created_at = utcnow()
        row: dict[str, list[Any]] = {
            "name": [bundle.name], "version": [bundle.version],
            "architecture": [bundle.architecture], "classes": [json.dumps(bundle.classes)],
            "preprocessing": [bundle.spec.to_json()], "metrics": [json.dumps(bundle.metrics)],
            "config": [json.dumps(bundle.config, default=str)],
            "lineage": [json.dumps(bundle.lineage, default=str)],
            "onnx": [bundle.onnx], "weights": [bundle.weights], "created_at": [bundle.created_at],
        }
        for part in ("onnx", "weights"):
            value = row[part][0]
            if value is not None and backend.too_large(len(value)):
                _save_parts(backend, bundle, part, value)
                row[part] = [None]
        backend.insert(MODELS, pa.table(row, schema=arrow_schema(MODEL_COLUMNS)))
    return bundle


def _save_parts(backend: Backend, bundle: ModelBundle, part: str, value: bytes) -> None:
    if not backend.table_exists(PARTS):
        backend.create_table(PARTS, PART_COLUMNS, primary_key=("name", "version", "part", "seq"))
    size = PART_BYTES
    while size > 4096 and backend.too_large(size):
        size //= 2
    pieces = [value[i:i + size] for i in range(0, len(value), size)]
    n = len(pieces)
    backend.insert(PARTS, pa.table({
        "name": [bundle.name] * n, "version": [bundle.version] * n, "part": [part] * n,
        "seq": list(range(n)), "data": pieces}, schema=arrow_schema(PART_COLUMNS)))


def _load_part(backend: Backend, name: str, version: int, part: str) -> bytes | None:
    if not backend.table_exists(PARTS):
        return None
    rows = backend.query(f"SELECT data FROM {backend.quote(PARTS)} WHERE name = ? AND version = ? "
                         "AND part = ? ORDER BY seq", [name, version, part])
    return b"".join(rows.column(0).to_pylist()) if rows.num_rows else None


def _known(backend: Backend) -> str:
    if not backend.table_exists(MODELS):
        return "none yet"
    rows = backend.query(f"SELECT name, max(version) AS v FROM {backend.quote(MODELS)} "
                         "GROUP BY name ORDER BY name").to_pylist()
    return ", ".join(f"{r['name']} (v1..v{r['v']})" for r in rows) or "none yet"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value or {}


def load_trainable(backend: Backend, ref: str) -> tuple[ModelBundle, bytes]:
    """The model ``ref`` and its PyTorch weights, to start training from (``--from``): a bare
    name means its newest version that has them (a quantized version is ONNX only)."""
    name, version = parse_ref(ref)
    bundle = load(backend, name, version)
    if bundle.weights is not None:
        return bundle, bundle.weights
    if version is None:
        rows = backend.query(f"SELECT version FROM {backend.quote(MODELS)} WHERE name = ? "
                             "ORDER BY version DESC", [name]).column(0).to_pylist()
        for older in rows[1:]:
            candidate = load(backend, name, int(older))
            if candidate.weights is not None:
                return candidate, candidate.weights
    raise SqlvisionError(f"model {bundle.ref} has no PyTorch weights (imported from ONNX, or "
                         "quantized)", "start from a model sqlvision trained (NAME:VERSION), or a "
                         "checkpoint file")


def resolve_version(backend: Backend, name: str, version: int | None = None) -> int:
    """The version ``name`` at ``version`` (default: the latest) is, without reading the model;
    fails listing what exists, as :func:`load` does."""
    if not backend.table_exists(MODELS):
        raise SqlvisionError(f"model {name!r} not found: no models yet",
                             "train one first: sqlvision train NAME --table TABLE")
    where, params = "name = ?", [name]
    if version is not None:
        where, params = "name = ? AND version = ?", [name, int(version)]  # type: ignore[list-item]
    found = backend.scalar(f"SELECT max(version) FROM {backend.quote(MODELS)} WHERE {where}", params)
    if found is None:
        what = f"{name}:{version}" if version is not None else name
        raise SqlvisionError(f"model {what!r} not found (models: {_known(backend)})",
                             "check the name and version with: sqlvision models list")
    return int(found)


def load_classes(backend: Backend, name: str, version: int | None = None) -> tuple[int, list[str]]:
    """The version ``name`` at ``version`` is and its class names, without reading the model."""
    number = resolve_version(backend, name, version)
    value = backend.scalar(f"SELECT classes FROM {backend.quote(MODELS)} WHERE name = ? AND "
                           "version = ?", [name, number])
    return number, list(_json(value))


def load(backend: Backend, name: str, version: int | None = None, *,
         weights: bool = True) -> ModelBundle:
    """The bundle ``name`` at ``version`` (default: the latest); fails listing what exists.

    ``weights=False`` leaves the PyTorch weights out: ONNX Runtime needs only the graph.
    """
    number = resolve_version(backend, name, version)
    columns = ", ".join(backend.quote_column(c.name) if weights or c.name != "weights"
                        else "NULL AS weights" for c in MODEL_COLUMNS)
    rows = backend.query(f"SELECT {columns} FROM {backend.quote(MODELS)} WHERE name = ? AND "
                         "version = ?", [name, number]).to_pylist()
    r = rows[0]
    for part in ("onnx", "weights") if weights else ("onnx",):
        if r[part] is None:
            r[part] = _load_part(backend, r["name"], int(r["version"]), part)
    return bundle_from_row(r)


def bundle_from_row(r: dict[str, Any]) -> ModelBundle:
    """The bundle of one ``sv_models`` row (its parts already joined); also used by readers
    that are not a :class:`Backend`, such as the PL/Python functions inside PostgreSQL."""
    return ModelBundle(
        name=r["name"], architecture=r["architecture"], classes=list(_json(r["classes"])),
        spec=PreprocessSpec.from_dict(_json(r["preprocessing"])), onnx=bytes(r["onnx"]),
        weights=bytes(r["weights"]) if r["weights"] is not None else None,
        metrics=_json(r["metrics"]), config=_json(r["config"]), lineage=_json(r["lineage"]),
        version=int(r["version"]), created_at=as_datetime(r["created_at"]),
    )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name:version``."""
    name, sep, version = ref.rpartition(":")
    if sep and version.isdigit():
        return name, int(version)
    return ref, None


def version_of_run(backend: Backend, name: str, run_id: str) -> int | None:
    """The version of ``name`` that training run ``run_id`` registered, if any."""
    if not backend.table_exists(MODELS):
        return None
    rows = backend.query(f"SELECT version, lineage FROM {backend.quote(MODELS)} WHERE name = ? "
                         "ORDER BY version", [name])
    for version, lineage in zip(*(c.to_pylist() for c in rows.columns), strict=True):
        data = json.loads(lineage) if isinstance(lineage, str) else (lineage or {})
        if data.get("run_id") == run_id:
            return int(version)
    return None


def list_models(backend: Backend) -> pa.Table:
    """One row per model version, without the bytes."""
    if not backend.table_exists(MODELS):
        return pa.table({"name": pa.array([], pa.string()), "version": pa.array([], pa.int32())})
    return backend.query(f"SELECT {_SUMMARY} FROM {backend.quote(MODELS)} ORDER BY name, version")


def delete(backend: Backend, name: str, version: int | None = None) -> int:
    """Delete one version, or every version of ``name``; returns how many went."""
    load(backend, name, version)  # fails with the list of models when there is nothing to delete
    q = backend.quote(MODELS)
    where, params = ("name = ? AND version = ?", [name, version]) if version is not None else (
        "name = ?", [name])
    n = backend.scalar(f"SELECT count(*) FROM {q} WHERE {where}", params)
    with backend.transaction():
        backend.execute(f"DELETE FROM {q} WHERE {where}", params)
        if backend.table_exists(PARTS):
            backend.execute(f"DELETE FROM {backend.quote(PARTS)} WHERE {where}", params)
    return int(n)
