"""Errors as RFC 9457 problem details (``application/problem+json``): status, title, detail
and, where there is one, the fix (``hint``). Nothing in them echoes a credential."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from sqlvision.db.url import redact_text
from sqlvision.errors import ImageError, SqlvisionError

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("sqlvision.serve")


class ProblemDetails(BaseModel):
    """The body of every error answer (RFC 9457), for the OpenAPI schema."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    hint: str | None = None
    instance: str | None = None


#: the error answers every API route may give, as OpenAPI documents them
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": HTTPStatus(status).phrase,
             "content": {MEDIA_TYPE: {"schema": ProblemDetails.model_json_schema()}}}
    for status in (400, 401, 403, 404, 413, 415, 422, 503)}


class Problem(Exception):
    """A request the service refuses, with its HTTP status and the fix."""

    def __init__(self, status: int, detail: str, hint: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.hint, self.headers = status, detail, hint, headers


def response(status: int, detail: str, hint: str | None = None, *, instance: str | None = None,
             headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    """One problem-details response."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                            "status": status, "detail": detail}
    if hint:
        body["hint"] = hint
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def status_of(exc: SqlvisionError) -> int:
    """404 for what does not exist, 422 for an image that cannot be used, else 400."""
    if "not found" in exc.message or exc.message.startswith("no row with"):
        return 404
    if isinstance(exc, ImageError):
        return 413 if exc.message.startswith("image too large") else 422
    return 400


def install(app: FastAPI, db_url: str | None) -> None:
    """Route every error through :func:`response`, with the database's credentials masked."""

    def clean(text: str) -> str:
        return redact_text(text, db_url)

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return response(exc.status, clean(exc.detail), exc.hint and clean(exc.hint),
                        instance=request.url.path, headers=exc.headers)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return response(exc.status_code, clean(str(exc.detail)), instance=request.url.path,
                        headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return response(422, f"invalid request: {where}", "see the API schema at /docs",
                        instance=request.url.path, errors=errors)

    async def on_sqlvision(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SqlvisionError)
        return response(status_of(exc), clean(exc.message), exc.hint and clean(exc.hint),
                        instance=request.url.path)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__,
                  clean(" ".join(str(exc).split())))
        return response(500, "internal error", "the server log has the details",
                        instance=request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(SqlvisionError, on_sqlvision)
    app.add_exception_handler(Exception, on_error)
