"""Dynamic batching: concurrent requests for one model version are gathered into one inference
call, up to ``max_batch`` images or until the first waited ``max_wait`` seconds. A batch waits
only while another one is scoring: on an idle engine a request starts at once, and under load
the requests that queued up during the previous batch go together.

Up to ``concurrency`` batches score at once (one per core for single-threaded ONNX Runtime
sessions, as batch ``predict`` does); while they run, the next batch gathers. The queue is
bounded: when full, a request is refused (503) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from sqlvision.serve.problems import Problem


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]


class BatcherClosed(Exception):
    """The batcher was retired (its model version unloaded): take the version's new one."""


class Batcher:
    """Gathers ``N x C x H x W`` uint8 pixel arrays and scores them together with ``score``."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], executor: Executor, *,
                 max_batch: int, max_wait: float, concurrency: int = 1, max_queue: int = 4096,
                 observe: Callable[[int], Any] | None = None) -> None:
        self.score, self.executor = score, executor
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self.slots = asyncio.Semaphore(max(1, concurrency))
        self.observe = observe
        self.running: set[asyncio.Task[None]] = set()
        self.closed = False
        self.gathering = False  # holding requests taken from the queue, not yet scoring
        self.task = asyncio.get_running_loop().create_task(self._gather())

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for ``pixels`` (their rows, in order), scored in some batch."""
        if self.closed:
            raise BatcherClosed
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(pixels, future))
        except asyncio.QueueFull:
            raise Problem(503, "the prediction queue is full", "retry shortly",
                          headers={"Retry-After": "1"}) from None
        return await future

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            items = [await self.queue.get()]
            self.gathering = True
            size = len(items[0].pixels)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not self.running:  # an idle engine starts at once
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                items.append(item)
                size += len(item.pixels)
            task = loop.create_task(self._run(items, size))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
            self.gathering = False

    async def _run(self, items: list[_Item], size: int) -> None:
        try:
            batch = items[0].pixels if len(items) == 1 else np.concatenate([i.pixels for i in items])
            if self.observe is not None:
                self.observe(size)
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.score, batch)
        except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.slots.release()
        start = 0
        for item in items:
            n = len(item.pixels)
            if not item.future.done():  # its client may have gone
                item.future.set_result(probs[start:start + n])
            start += n

    async def close(self) -> None:
        """Take no more requests; finish those queued and scoring, then stop."""
        self.closed = True
        while not self.queue.empty() or self.gathering or self.running:
            if self.running:
                await asyncio.gather(*self.running, return_exceptions=True)
            else:
                await asyncio.sleep(0.001)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
