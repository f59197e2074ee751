"""In-process publish/subscribe: one publish, encoded once, fanned out to every SSE subscriber."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web

log = logging.getLogger("fleetd.events")

MAX_UNREAD_BYTES = 8 << 20
"""A subscriber's unread backlog above this is dropped (its connection closed)."""
_OVERHEAD = 64
"""Bytes counted per queued message besides its text (the deque slot, the bytes object)."""


class _Subscriber:
    __slots__ = ("dropped", "messages", "on_drop", "ready", "unread")

    def __init__(self, on_drop: Callable[[], None] | None) -> None:
        self.messages: deque[bytes] = deque()
        self.unread = 0
        self.ready = asyncio.Event()
        self.dropped = False
        self.on_drop = on_drop


class EventBus:
    """Subscribers get pre-encoded SSE messages; one whose unread backlog passes a byte budget
    is dropped and its connection closed (its browser's EventSource reconnects and reloads
    the state), so a stuck client costs at most ``max_unread_bytes``."""

    def __init__(self, max_unread_bytes: int = MAX_UNREAD_BYTES) -> None:
        self._subs: set[_Subscriber] = set()
        self._max = max_unread_bytes
        self._enc = msgspec.json.Encoder()
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, kind: str, obj: Any) -> None:
        if not self._subs:
            return
        msg = b"event: " + kind.encode() + b"\ndata: " + self._enc.encode(obj) + b"\n\n"
        cost = len(msg) + _OVERHEAD
        for sub in list(self._subs):
            if sub.unread + cost > self._max:
                log.warning(
                    "dropping an SSE subscriber %d messages (%d KiB) behind",
                    len(sub.messages),
                    sub.unread >> 10,
                )
                self._drop(sub)
            else:
                sub.messages.append(msg)
                sub.unread += cost
                sub.ready.set()

    def _drop(self, sub: _Subscriber) -> None:
        self._subs.discard(sub)
        self.dropped += 1
        sub.dropped = True
        sub.messages.clear()
        sub.unread = 0
        sub.ready.set()
        if sub.on_drop is not None:
            # Its handler may be stuck writing to a client that reads nothing: close the
            # connection so that the write fails and the handler ends.
            sub.on_drop()

    async def subscribe(self, on_drop: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        sub = _Subscriber(on_drop)
        self._subs.add(sub)
        try:
            while True:
                await sub.ready.wait()
                if sub.dropped:
                    return
                while sub.messages:
                    msg = sub.messages.popleft()
                    sub.unread -= len(msg) + _OVERHEAD
                    yield msg
                    if sub.dropped:
                        return
                sub.ready.clear()
        finally:
            self._subs.discard(sub)

    def close_all(self) -> None:
        """Ends every subscription, so shutdown does not wait on open SSE streams."""
        for sub in self._subs:
            sub.dropped = True
            sub.ready.set()
        self._subs.clear()


EVENTS = web.AppKey("events", EventBus)
