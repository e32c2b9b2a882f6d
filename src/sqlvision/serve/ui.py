"""The web UI: plain HTML, CSS and JavaScript shipped in the package, served as they are."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(str(files("sqlvision.serve") / "static"))


def mount(app: FastAPI) -> None:
    """``/`` is the single-page UI; ``/static/`` its files. They hold no data: what the UI shows
    comes from the API, under its tokens."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
