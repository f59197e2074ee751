"""In-process publish/subscribe: one publish, encoded once, fanned out to every SSE subscriber."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

log = logging.getLogger("fleetd.events")

_CLOSE = b""


class EventBus:
    """Subscribers get pre-encoded SSE messages; a subscriber too slow to keep up is dropped
    (its browser's EventSource reconnects and reloads the state) so memory stays bounded."""

    def __init__(self, max_backlog: int = 20_000) -> None:
        self._subs: set[asyncio.Queue[bytes]] = set()
        self._max = max_backlog
        self._enc = msgspec.json.Encoder()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, kind: str, obj: Any) -> None:
        if not self._subs:
            return
        msg = b"event: " + kind.encode() + b"\ndata: " + self._enc.encode(obj) + b"\n\n"
        for q in list(self._subs):
            if q.qsize() >= self._max:
                log.warning("dropping an SSE subscriber %d messages behind", q.qsize())
                self._subs.discard(q)
                q.put_nowait(_CLOSE)
            else:
                q.put_nowait(msg)

    async def subscribe(self) -> AsyncIterator[bytes]:
        q: asyncio.Queue[bytes] = asyncio.Queue()
        self._subs.add(q)
        try:
            while True:
                msg = await q.get()
                if msg is _CLOSE:
                    return
                yield msg
        finally:
            self._subs.discard(q)

    def close_all(self) -> None:
        """Ends every subscription, so shutdown does not wait on open SSE streams."""
        for q in self._subs:
            q.put_nowait(_CLOSE)
        self._subs.clear()


EVENTS = web.AppKey("events", EventBus)


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    """The cleanup_ctx entry of the event bus: before every publisher, closed after them."""
    bus = app[EVENTS] = EventBus()
    yield
    bus.close_all()
