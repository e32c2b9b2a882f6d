"""The web UI: plain HTML, CSS and JavaScript shipped in the package, served as they are; and
the OpenAPI page at ``/docs`` with Swagger UI's files from a PyPI package, so it needs no CDN."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(str(files("sqlvision.serve") / "static"))


def mount(app: FastAPI) -> None:
    """``/`` is the single-page UI; ``/static/`` its files. They hold no data: what the UI shows
    comes from the API, under its tokens."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def mount_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` package (the ``serve`` extra),
    else from FastAPI's default CDN."""
    assets: dict[str, str] = {}
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        pass
    else:
        app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")
        assets = {"swagger_js_url": "/docs-static/swagger-ui-bundle.js",
                  "swagger_css_url": "/docs-static/swagger-ui.css",
                  "swagger_favicon_url": "/docs-static/favicon-32x32.png"}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                   title="sqlvision API", **assets)  # type: ignore[arg-type]
