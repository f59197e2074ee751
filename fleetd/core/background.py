"""Background work owned by a ``cleanup_ctx`` entry: loops started before its yield, cancelled and
awaited after it, so no task outlives the app and none is fire-and-forget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Jobs:
    """Short background jobs of one component (an order to send, an agent to sync): each is
    kept until it ends, its failure is logged, and ``close`` cancels and awaits the rest, so
    none outlives the component."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._jobs: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        job = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._ended)
        return job

    def _ended(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        if not job.cancelled() and (exc := job.exception()) is not None:
            self.log.error("background job failed", exc_info=exc)

    async def close(self) -> None:
        jobs = list(self._jobs)
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
