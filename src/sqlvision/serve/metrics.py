"""Prometheus metrics, in a registry of the app's own (several apps in one process never clash):
requests and their latency by route, prediction batch sizes, errors."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's counters and histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sqlvision_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("sqlvision_http_request_seconds", "time to answer a request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("sqlvision_http_errors", "requests answered with a 4xx or 5xx",
                              ["route", "status"], registry=self.registry)
        self.batches = Histogram("sqlvision_batch_size", "images per inference call", ["model"],
                                 buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("sqlvision_predicted_images", "images classified", ["model"],
                              registry=self.registry)

    def batch_observer(self, model: str) -> Any:
        """A callback recording one batch's size for ``model``."""
        histogram, counter = self.batches.labels(model), self.images.labels(model)

        def observe(size: int) -> None:
            histogram.observe(size)
            counter.inc(size)
        return observe

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (bounded label values)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched")
            code = str(status[0])
            self.metrics.requests.labels(scope["method"], route, code).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            if status[0] >= 400:
                self.metrics.errors.labels(route, code).inc()
