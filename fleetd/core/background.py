"""The one way background work runs: owned by a ``cleanup_ctx`` entry, so no task outlives
the app and none is fire-and-forget.

``background()`` runs a loop for the life of a ``cleanup_ctx`` entry (started before its
yield, cancelled and awaited after it). ``Jobs`` holds short one-off jobs (an order to send,
a row to write) that their owner starts from synchronous code; its ``close()``, called by the
owner's ``cleanup_ctx`` entry, cancels and awaits those still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger("fleetd.background")


_dead: dict[asyncio.Task[None], str] = {}
"""Loops that ended with an error while their owner still runs, for ``/healthz``."""


def dead_loops() -> list[str]:
    """``name: error`` of every owned loop that died; a loop never ends on its own."""
    return sorted(_dead.values())


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(coro, name=name)

    def ended(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and (exc := t.exception()) is not None:
            # Said at once, not at shutdown: a dead sweep or flusher must not go unnoticed.
            log.error("background loop %s died", name, exc_info=exc)
            _dead[t] = f"{name}: {exc!r}"

    task.add_done_callback(ended)
    try:
        yield
    finally:
        task.cancel()
        _dead.pop(task, None)
        with contextlib.suppress(asyncio.CancelledError, Exception):  # logged when it died
            await task


class Jobs:
    """One-off background jobs of one owner; a job that fails is logged with its traceback
    (nobody awaits it to see the error)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._jobs: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        job = asyncio.get_running_loop().create_task(coro, name=name)
        self._jobs.add(job)
        job.add_done_callback(self._finished)
        return job

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        if not job.cancelled() and (exc := job.exception()) is not None:
            log.error("%s: background job failed", self.owner, exc_info=exc)

    async def close(self) -> None:
        jobs = list(self._jobs)
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
