"""The prediction service and web UI (``sqlvision serve``): FastAPI, under the ``serve`` extra.

:func:`create_app` builds the ASGI app (API under ``/v1``, the UI at ``/``, OpenAPI at
``/docs``); :func:`run` serves it with uvicorn. Importing this package needs no web framework.
"""

from __future__ import annotations

from typing import Any

from sqlvision.serve.config import ServeConfig


def create_app(config: ServeConfig | None = None) -> Any:
    """The FastAPI app for ``config`` (see :mod:`sqlvision.serve.app`)."""
    from sqlvision.serve.app import create_app as build

    return build(config or ServeConfig())


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (see :mod:`sqlvision.serve.server`)."""
    from sqlvision.serve.server import run as serve

    serve(config, host, port)


__all__ = ["ServeConfig", "create_app", "run"]
