"""Bounded, ordered parallel map: overlaps I/O and decoding with the consumer's work."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Worker threads for pools that read files and decode: I/O waits, so more than the cores."""
    return min(16, 2 * cpu_count() + 2)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                ahead: int | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` in input order, running at most ``ahead`` calls ahead of the consumer.

    Memory stays bounded by ``ahead`` results however long ``items`` is, unlike
    ``Executor.map``, which submits everything up front.
    """
    workers = workers or default_workers()
    ahead = ahead or 2 * workers
    iterator = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="sqlvision") as pool:
        pending: deque[Future[R]] = deque(
            pool.submit(fn, item) for item in itertools.islice(iterator, ahead)
        )
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(iterator, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` on a background thread, at most ``depth`` ahead of the consumer.

    For I/O such as database fetches that should overlap with the consumer's compute.
    Exceptions in the producer are re-raised in the consumer.
    """
    buffer: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((True, item))
            buffer.put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, not swallowed
            buffer.put((False, exc))

    thread = threading.Thread(target=produce, name="sqlvision-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.05)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
