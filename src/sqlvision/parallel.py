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


class BackgroundWriter:
    """Runs calls in order on one writer thread, with at most ``depth`` waiting or running: a
    producer that gets ahead blocks in :meth:`submit`, so memory stays bounded. A call's error
    surfaces in the next :meth:`submit` or in :meth:`drain`.

    For committing batch N while batch N+1 is read or scored: the wait for the disk or the
    server stays off the producer's path.
    """

    def __init__(self, depth: int = 1) -> None:
        self.depth = depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sqlvision-writer")
        self.pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)`` after what is already queued."""
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args, **kwargs))

    def drain(self) -> None:
        """Wait for every queued call, re-raising the first error."""
        while self.pending:
            self.pending.popleft().result()

    def abort(self, cleanup: Callable[[], Any] | None = None) -> None:
        """Drop the calls not started, then run ``cleanup`` on the writer thread after the one
        running (for a rollback on the writer's connection)."""
        for future in self.pending:
            future.cancel()
        self.pending.clear()
        if cleanup is not None:
            self.pool.submit(cleanup).result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
