"""The HTTP API under ``/v1``: predict (dynamic batching), read tables, images, predictions,
models and evaluations, the review queue and relabeling; health, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field

from sqlvision import __version__
from sqlvision.errors import ImageError
from sqlvision.imaging.probe import probe
from sqlvision.models import registry
from sqlvision.predict.batch import top_k_entries
from sqlvision.serve import queries, review, thumbnails
from sqlvision.serve.auth import read_access, write_access
from sqlvision.serve.inputs import REQUEST_BODY, check_image, number, read_upload
from sqlvision.serve.problems import RESPONSES, Problem

INT64 = 2**63 - 1
_MEDIA = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp",
          "WEBP": "image/webp", "TIFF": "image/tiff"}


def _plain(value: str) -> str:
    """Text a database can store: no control characters, valid UTF-8."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("control characters are not allowed")
    value.encode("utf-8")  # lone surrogates raise UnicodeEncodeError, a ValueError
    return value


Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain)]
TableName = Annotated[str, PathParam(max_length=255), AfterValidator(_plain)]
ModelRef = Annotated[str, PathParam(max_length=140, description="NAME or NAME:VERSION")]
ImageId = Annotated[int, PathParam(ge=-INT64, le=INT64)]
Version = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
Split = Annotated[Text | None, Query()]


class Relabel(BaseModel):
    """A new label for one row (the same label confirms it as reviewed)."""

    label: Text


def _ref(ref: str, version: int | None = None) -> tuple[str, int | None]:
    """``NAME[:VERSION]`` from the path (a ``version`` query parameter overrides)."""
    name, in_ref = registry.parse_ref(ref)
    registry.check_model_name(name)
    if in_ref is not None and not 1 <= in_ref <= 2**31 - 1:
        raise Problem(400, f"bad model version {in_ref}")
    return name, version if version is not None else in_ref


def _state(request: Request) -> Any:
    return request.app.state


health = APIRouter(tags=["health"], responses={503: RESPONSES[503], 401: RESPONSES[401]})
api = APIRouter(prefix="/v1", dependencies=[Depends(read_access)], responses=RESPONSES)


@health.get("/healthz", summary="liveness: the process answers")
async def healthz(request: Request) -> dict[str, Any]:
    """Always open: whether the API needs a token, and the version."""
    return {"status": "ok", "version": __version__,
            "token_required": bool(_state(request).config.tokens)}


@health.get("/readyz", summary="readiness: the database answers")
async def readyz(request: Request) -> dict[str, Any]:
    """503 while the database does not answer within two seconds."""
    state = _state(request)
    try:
        await asyncio.wait_for(state.database.call(lambda db: db.backend.scalar("SELECT 1")), 2.0)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        raise Problem(503, f"the database does not answer ({type(exc).__name__})",
                      "check the database server") from None
    return {"status": "ready", "models_loaded": [m.ref for m in state.pool.loaded.values()]}


@health.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(read_access)])
async def metrics(request: Request) -> Response:
    """Requests, latency, batch sizes and errors, in Prometheus' text format."""
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)


# -- predict ------------------------------------------------------------------------------------
@api.post("/models/{ref}/predict", summary="classify one or many images",
          openapi_extra={"requestBody": REQUEST_BODY}, tags=["predict"])
async def predict(request: Request, ref: ModelRef,
                  top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
                  min_prob: Annotated[float | None, Query(ge=0, le=1)] = None) -> dict[str, Any]:
    """Label, confidence and top-k per image, with the model version and the preprocessing
    applied. Concurrent requests are scored together (dynamic batching)."""
    state = _state(request)
    name, version = _ref(ref)
    upload = await read_upload(request, state.config)
    k = int(top_k if top_k is not None else number(upload.options, "top_k", 5, 1, 1000))
    floor = min_prob if min_prob is not None else number(upload.options, "min_prob", 0.0, 0, 1)
    loaded = await state.pool.get(name, version)
    spec, loop = loaded.classifier.spec, asyncio.get_running_loop()

    def prepare(data: bytes) -> np.ndarray:
        check_image(data, state.config.max_pixels)
        return spec(data)

    results = await asyncio.gather(*(loop.run_in_executor(state.pool.decoders, prepare, data)
                                     for data in upload.images), return_exceptions=True)
    for i, result in enumerate(results):
        if isinstance(result, Problem):
            raise Problem(result.status, f"image {i}: {result.detail}", result.hint)
        if isinstance(result, ImageError):
            raise Problem(413 if result.message.startswith("image too large") else 422,
                          f"image {i}: {result.message}", result.hint)
        if isinstance(result, BaseException):
            raise result
    probs = await state.pool.score(loaded, np.stack(results))  # type: ignore[arg-type]
    classes = loaded.classifier.classes
    tops = top_k_entries(classes, probs, k, floor)
    predictions = [{"label": classes[int(p.argmax())], "confidence": float(p.max()), "top_k": t}
                   for p, t in zip(probs, tops, strict=True)]
    out: dict[str, Any] = {"model": loaded.bundle.name, "version": loaded.bundle.version,
                           "ref": loaded.ref, "preprocessing": spec.to_dict(),
                           "predictions": predictions}
    if len(predictions) == 1:
        out.update(predictions[0])
    return out


# -- models -------------------------------------------------------------------------------------
@api.get("/models", summary="registered models", tags=["models"])
async def models(request: Request) -> list[dict[str, Any]]:
    """Each model name with its versions and its newest version's summary."""
    return await _state(request).database.call(queries.list_models)


@api.get("/models/{ref}", summary="one model version", tags=["models"])
async def model(request: Request, ref: ModelRef, version: Version = None) -> dict[str, Any]:
    """Classes, preprocessing, input/output schema, metrics, lineage, curves."""
    name, v = _ref(ref, version)
    return await _state(request).database.call(queries.model_detail, name, v)


@api.get("/models/{ref}/evaluations", summary="stored evaluation reports", tags=["models"])
async def model_evaluations(request: Request, ref: ModelRef,
                            version: Version = None) -> list[dict[str, Any]]:
    """Rows of ``sv_evaluations`` (accuracy, per-class metrics, confusion), newest first."""
    name, v = _ref(ref, version)
    return await _state(request).database.call(queries.evaluations, name, v)


@api.get("/models/{ref}/confusion", summary="confusion matrix of stored predictions",
         tags=["models"])
async def model_confusion(request: Request, ref: ModelRef, table: Annotated[Text, Query()],
                          split: Split = None, version: Version = None) -> dict[str, Any]:
    """Against the table's current labels; rows are true labels, columns predictions."""
    name, v = _ref(ref, version)
    return await _state(request).database.call(queries.confusion, name, v, table, split)


@api.get("/models/{ref}/mistakes", summary="the most confident mistakes", tags=["models"])
async def model_mistakes(request: Request, ref: ModelRef, table: Annotated[Text, Query()],
                         split: Split = None, version: Version = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 24) -> dict[str, Any]:
    """Wrong predictions, the most confident first."""
    name, v = _ref(ref, version)
    return await _state(request).database.call(queries.mistakes, name, v, table, split, limit)


# -- tables and images ------------------------------------------------------------------------
@api.get("/tables", summary="the user's tables", tags=["tables"])
async def tables(request: Request) -> list[dict[str, Any]]:
    """Name, row count and whether each is an image table."""
    return await _state(request).database.call(queries.list_tables)


@api.get("/tables/{table}", summary="one table: columns and counts per label x split",
         tags=["tables"])
async def table_info(request: Request, table: TableName) -> dict[str, Any]:
    """What ``sqlvision stats`` shows."""
    return await _state(request).database.call(queries.table_info, table)


@api.get("/tables/{table}/images", summary="a page of images, filtered", tags=["tables"])
async def images(request: Request, table: TableName, label: Split = None, split: Split = None,
                 model: Annotated[Text | None, Query(description="NAME[:VERSION] whose "
                                                     "predictions to show")] = None,
                 predicted: Split = None,
                 min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
                 max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
                 misclassified: bool = False,
                 order: Annotated[str, Query(pattern="^-?(id|confidence)$")] = "id",
                 limit: Annotated[int, Query(ge=1, le=500)] = 60,
                 offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0) -> dict[str, Any]:
    """Rows with their label, split, size, and the model's prediction and confidence."""
    if model is not None:
        _ref(model)
    f = queries.ImageFilter(label=label, split=split, model=model, predicted=predicted,
                            min_confidence=min_confidence, max_confidence=max_confidence,
                            misclassified=misclassified, order=order, limit=limit, offset=offset)
    return await _state(request).database.call(queries.list_images, table, f)


@api.get("/tables/{table}/images/{image_id}", summary="one image's row, predictions, history",
         tags=["tables"])
async def image(request: Request, table: TableName, image_id: ImageId) -> dict[str, Any]:
    """Its metadata, its predictions by every model version, its label changes."""
    return await _state(request).database.call(queries.image_detail, table, image_id)


@api.get("/tables/{table}/images/{image_id}/image", summary="the image's bytes", tags=["tables"],
         response_class=Response)
async def image_file(request: Request, table: TableName, image_id: ImageId) -> Response:
    """As stored (its own format)."""
    data = await _state(request).database.call(queries.image_data, table, image_id)
    try:
        media = _MEDIA.get(probe(data, 0).format, "application/octet-stream")
    except ImageError:
        media = "application/octet-stream"
    return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                     "Cache-Control": "private, max-age=60"})


@api.get("/tables/{table}/images/{image_id}/thumbnail", summary="a JPEG thumbnail",
         tags=["tables"], response_class=Response)
async def thumbnail(request: Request, table: TableName, image_id: ImageId,
                    size: Annotated[int, Query(ge=16, le=512)] = 160) -> Response:
    """The image shrunk to fit ``size`` x ``size`` (kept in a bounded cache)."""
    state = _state(request)
    key = (table, image_id, size)
    data = state.thumbnails.get(key)
    if data is None:
        raw = await state.database.call(queries.image_data, table, image_id)
        data = await asyncio.get_running_loop().run_in_executor(
            state.pool.decoders, thumbnails.thumbnail, raw, size, state.config.max_pixels)
        state.thumbnails.put(key, data)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


# -- review -------------------------------------------------------------------------------------
@api.get("/tables/{table}/review", summary="the review queue", tags=["review"])
async def review_queue(request: Request, table: TableName, model: Annotated[Text, Query()],
                       limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """Rows not reviewed yet: misclassified first, then the least confident."""
    _ref(model)
    return await _state(request).database.call(review.review_queue, table, model, limit)


@api.put("/tables/{table}/images/{image_id}/label", summary="relabel one image (token required)",
         tags=["review"])
async def relabel(request: Request, table: TableName, image_id: ImageId, body: Relabel,
                  by: Annotated[str, Depends(write_access)]) -> dict[str, Any]:
    """Writes the label into the table and an audit row into ``sv_label_audit``."""
    return await _state(request).database.call(review.relabel, table, image_id, body.label, by)
