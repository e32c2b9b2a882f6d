"""One database connection on one thread: drivers (DuckDB, PyMySQL) must not be shared across
threads, so every query of the service runs there, in turn, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlvision.connection import Database

T = TypeVar("T")


class DatabaseThread:
    """Owns a :class:`~sqlvision.connection.Database`, opened and used on its own thread."""

    def __init__(self, url: str | None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlvision-db")
        self.db: Database = self.executor.submit(Database, url).result()
        self.url = self.db.url.raw

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(database, *args)`` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, self.db, *args)

    def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(database, *args)`` on the database thread, waiting for it (outside the event
        loop: tests, benchmarks)."""
        return self.executor.submit(func, self.db, *args).result()

    def close(self) -> None:
        """Close the connection and stop the thread."""
        self.executor.submit(self.db.close).result()
        self.executor.shutdown(wait=True)
