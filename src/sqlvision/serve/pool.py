"""Loaded models: each version built once (an ONNX Runtime session and its batcher), a name
without a version followed to its newest one, old versions retired without dropping requests."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from sqlvision.models import registry
from sqlvision.models.bundle import ModelBundle
from sqlvision.models.runtime import OnnxClassifier, load_classifier
from sqlvision.parallel import cpu_count
from sqlvision.serve.batching import Batcher, BatcherClosed
from sqlvision.serve.config import ServeConfig
from sqlvision.serve.database import DatabaseThread


@dataclass
class Loaded:
    """One model version ready to score."""

    bundle: ModelBundle
    classifier: OnnxClassifier
    batcher: Batcher

    @property
    def ref(self) -> str:
        """``name:version``."""
        return self.bundle.ref


def _latest_version(db: Any, name: str) -> int:
    return registry.resolve_version(db.backend, name)


def _load(db: Any, name: str, version: int | None) -> ModelBundle:
    return registry.load(db.backend, name, version, weights=False)


class ModelPool:
    """The models the service has loaded, at most ``config.loaded_versions`` versions."""

    def __init__(self, database: DatabaseThread, config: ServeConfig, observe: Any = None) -> None:
        self.database, self.config, self.observe = database, config, observe
        self.loaded: OrderedDict[tuple[str, int], Loaded] = OrderedDict()
        self.latest: dict[str, tuple[int, float]] = {}  # name -> (version, when looked up)
        self.lock = asyncio.Lock()
        self.decoders = ThreadPoolExecutor(cpu_count(), thread_name_prefix="sqlvision-decode")
        self.scorers = ThreadPoolExecutor(cpu_count(), thread_name_prefix="sqlvision-score")

    async def version_of(self, name: str) -> int:
        """The newest version of ``name`` (looked up at most every ``refresh_seconds``)."""
        known = self.latest.get(name)
        now = time.monotonic()
        if known is not None and now - known[1] < self.config.refresh_seconds:
            return known[0]
        version = await self.database.call(_latest_version, name)
        self.latest[name] = (version, now)
        return version

    async def get(self, name: str, version: int | None = None) -> Loaded:
        """The loaded model ``name`` at ``version`` (default: the newest), loading it if needed."""
        registry.check_model_name(name)
        version = version if version is not None else await self.version_of(name)
        key = (name, version)
        found = self.loaded.get(key)
        if found is not None:
            self.loaded.move_to_end(key)
            return found
        async with self.lock:
            found = self.loaded.get(key)
            if found is None:
                found = await self._build(name, version)
                self.loaded[key] = found
                while len(self.loaded) > self.config.loaded_versions:
                    _, old = self.loaded.popitem(last=False)
                    asyncio.get_running_loop().create_task(old.batcher.close())
            return found

    async def _build(self, name: str, version: int) -> Loaded:
        bundle = await self.database.call(_load, name, version)
        loop = asyncio.get_running_loop()
        classifier = await loop.run_in_executor(self.scorers, load_classifier, bundle)
        observe = self.observe(bundle.name) if self.observe else None

        def score(pixels: np.ndarray) -> np.ndarray:
            return classifier.predict_proba(pixels)

        batcher = Batcher(score, self.scorers, max_batch=self.config.batch_limit(classifier.batch_size),
                          max_wait=self.config.max_wait_ms / 1000 if self.config.batching else 0.0,
                          concurrency=classifier.callers, max_queue=self.config.max_queue,
                          observe=observe)
        return Loaded(bundle, classifier, batcher)

    async def score(self, loaded: Loaded, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for ``pixels`` from ``loaded``'s batcher; if that version was unloaded
        meanwhile, from the version loaded again (no request is dropped)."""
        try:
            return await loaded.batcher.submit(pixels)
        except BatcherClosed:
            again = await self.get(loaded.bundle.name, loaded.bundle.version)
            return await again.batcher.submit(pixels)

    async def close(self) -> None:
        """Finish queued work, then release the sessions and threads."""
        for loaded in self.loaded.values():
            await loaded.batcher.close()
        self.loaded.clear()
        self.decoders.shutdown(wait=True)
        self.scorers.shutdown(wait=True)
