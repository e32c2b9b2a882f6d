"""The ASGI app: the database thread, the model pool and the metrics live for the app's
lifetime; errors become problem details; the UI is served beside the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sqlvision import __version__
from sqlvision.serve import api, problems, ui
from sqlvision.serve.config import ServeConfig
from sqlvision.serve.database import DatabaseThread
from sqlvision.serve.metrics import Metrics, MetricsMiddleware
from sqlvision.serve.pool import ModelPool
from sqlvision.serve.thumbnails import ByteCache


def create_app(config: ServeConfig) -> FastAPI:
    """The app for ``config``; the database opens when it starts (its lifespan)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = DatabaseThread(config.db)
        pool = ModelPool(database, config, observe=metrics.batch_observer)
        app.state.database, app.state.pool = database, pool
        try:
            yield
        finally:
            await pool.close()
            database.close()

    app = FastAPI(title="sqlvision", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Predictions and a look at the images, predictions and mistakes "
                              "of an sqlvision database.")
    app.state.config, app.state.metrics = config, metrics
    app.state.thumbnails = ByteCache(config.thumbnail_cache_bytes)
    problems.install(app, config.db)
    app.include_router(api.health)
    app.include_router(api.api)
    ui.mount(app)
    ui.mount_docs(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
