"""In-process publish/subscribe for ``GET /api/events``, coalesced per subscriber.

Every message is a whole object (agent, task…) and carries its ``revision``, so a reader
keeps the newest copy and loses nothing by skipping an older one. Each subscriber therefore
holds at most one unsent message per object — a newer change replaces it (each change is
encoded once, for all subscribers) — so what it sends is always the latest state:

- task (and other) messages go out as soon as the subscriber reads; a task's progress
  arrives as often as its agent reports it (twice a second), its end is never skipped;
- an agent whose status changes (online ↔ offline) or that this subscriber has not seen yet
  goes out at once;
- any other agent change waits until a second has passed since that agent's last message to
  this subscriber (at most one per agent per second): readiness, status message, loaded
  models go out then;
- a change of heartbeat figures alone (GPU memory and utilization, CPU, in-flight counts,
  last seen) also waits for that second, and then shares a budget of ``FIGURES_BYTES_PER_S``
  per subscriber, oldest first: with 5,000 agents heartbeating every 5 s (1,000 messages a
  second, about 1.4 MB/s) a dashboard gets each agent's figures every ~15 s instead.

Memory per subscriber is bounded by the number of objects, whatever the reader's speed. A
reader that takes nothing (a client that reads nothing) is dropped once the changes offered
to it since it last took a message pass ``MAX_UNREAD_BYTES``: its connection is closed, and
its browser's EventSource reconnects and reloads the state.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web

log = logging.getLogger("fleetd.events")

COALESCE_S = 1.0
"""At most one message per agent and subscriber in this time (status changes excepted)."""
FIGURES_BYTES_PER_S = 100_000
"""What heartbeat figures alone may cost a subscriber per second."""
MAX_UNREAD_BYTES = 8 << 20
"""Changes offered to a reader since it last took a message, past which it is dropped."""

Key = tuple[str, str]
Signature = tuple[Any, ...]


def _signature(a: Any) -> Signature:
    """What a user acts on in an agent; a change elsewhere is heartbeat figures."""
    return (
        a.status,
        a.initializing,
        a.ready_models,
        a.total_models,
        a.status_message,
        tuple(a.loaded_models),
        a.name,
        a.url,
        a.version,
        len(a.gpus),
    )


class _Held:
    """An agent's latest state waiting, in one subscriber, for its second or the budget."""

    __slots__ = ("due", "msg", "paced", "sig")

    def __init__(self, msg: bytes, sig: Signature, due: float) -> None:
        self.msg = msg
        self.sig = sig
        self.due = due
        self.paced = False


class _Subscriber:
    __slots__ = (
        "behind",
        "budget",
        "budget_at",
        "closed",
        "due",
        "held",
        "last",
        "now",
        "on_drop",
        "paced",
        "ready",
    )

    def __init__(
        self,
        last: dict[str, tuple[float, Signature]],
        at: float,
        on_drop: Callable[[], None] | None,
    ) -> None:
        self.now: dict[Key, tuple[bytes, Signature | None]] = {}
        """To send as soon as the reader is ready, in order of first change."""
        self.held: dict[str, _Held] = {}
        self.due: list[tuple[float, str]] = []
        """Heap of (when, agent id) of ``held`` agents waiting for their second."""
        self.paced: deque[str] = deque()
        """Agent ids whose figures alone changed, oldest first, waiting for the budget."""
        self.last = last
        """Agent id -> (when its last message was sent, its signature then)."""
        self.budget = float(FIGURES_BYTES_PER_S)
        self.budget_at = at
        self.ready = asyncio.Event()
        self.closed = False
        self.behind = 0
        """Bytes of changes offered since the reader last took a message."""
        self.on_drop = on_drop


class EventBus:
    """Fans out changes to SSE subscribers, coalesced per subscriber (see the module)."""

    def __init__(
        self,
        max_unread_bytes: int = MAX_UNREAD_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._subs: set[_Subscriber] = set()
        self._max = max_unread_bytes
        self.dropped = 0
        self._enc = msgspec.json.Encoder()
        self._clock = clock
        self._known: dict[str, Signature] = {}
        """Agent id -> signature as last published: what a new subscriber's snapshot shows."""

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, kind: str, obj: Any) -> None:
        key = (kind, getattr(obj, "id", ""))
        sig = _signature(obj) if kind == "agent" else None
        if sig is not None:
            self._known[key[1]] = sig
        if not self._subs:
            return
        msg = self._encode(kind, obj)
        for sub in list(self._subs):
            sub.behind += len(msg)
            if sub.behind > self._max:
                self._drop(sub)
            else:
                self._offer(sub, key, msg, sig)

    def _offer(self, sub: _Subscriber, key: Key, msg: bytes, sig: Signature | None) -> None:
        if sig is None or key in sub.now:
            sub.now[key] = (msg, sig)  # not sent yet: it goes as it is now
            sub.ready.set()
            return
        agent_id = key[1]
        held = sub.held.get(agent_id)
        last = sub.last.get(agent_id)
        if last is None or last[1][0] != sig[0]:
            sub.held.pop(agent_id, None)
            sub.now[key] = (msg, sig)
            sub.ready.set()
        elif held is not None:
            held.msg, held.sig = msg, sig
            if held.paced and sig != last[1]:
                # Waiting for the figures budget, but now more than figures changed.
                del sub.held[agent_id]
                sub.now[key] = (msg, sig)
                sub.ready.set()
        else:
            due = last[0] + COALESCE_S
            sub.held[agent_id] = _Held(msg, sig, due)
            heapq.heappush(sub.due, (due, agent_id))
            if sub.due[0][1] == agent_id:
                sub.ready.set()  # the reader's next wake-up comes sooner

    def _drop(self, sub: _Subscriber) -> None:
        log.warning(
            "dropping an SSE subscriber %d KiB of changes behind (it reads nothing)",
            sub.behind >> 10,
        )
        self.dropped += 1
        self._subs.discard(sub)
        sub.closed = True
        sub.now.clear()
        sub.held.clear()
        sub.ready.set()
        if sub.on_drop is not None:
            # Its handler may be stuck writing to a client that reads nothing: close the
            # connection so that the write fails and the handler ends.
            sub.on_drop()

    def _release(self, sub: _Subscriber, now: float) -> float | None:
        """Move the held agents whose time has come to ``sub.now``; when to look again."""
        while sub.due and sub.due[0][0] <= now:
            due, agent_id = heapq.heappop(sub.due)
            held = sub.held.get(agent_id)
            if held is None or held.paced or held.due != due:
                continue  # sent meanwhile (a status change), or held again since
            last = sub.last.get(agent_id)
            if last is not None and last[1] == held.sig:
                held.paced = True
                sub.paced.append(agent_id)
            else:
                del sub.held[agent_id]
                sub.now[("agent", agent_id)] = (held.msg, held.sig)
        sub.budget = min(
            float(FIGURES_BYTES_PER_S), sub.budget + (now - sub.budget_at) * FIGURES_BYTES_PER_S
        )
        sub.budget_at = now
        while sub.paced and sub.budget > 0 and not sub.now:
            agent_id = sub.paced.popleft()
            held = sub.held.get(agent_id)
            if held is not None and held.paced:
                del sub.held[agent_id]
                # Charged when sent.
                sub.now[("agent", agent_id)] = (held.msg, held.sig)
        waits = []
        if sub.due:
            waits.append(sub.due[0][0])
        if sub.paced and sub.budget <= 0:
            waits.append(now - sub.budget / FIGURES_BYTES_PER_S)
        return min(waits) if waits else None

    def _encode(self, kind: str, obj: Any) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + self._enc.encode(obj) + b"\n\n"

    def subscribe(self, on_drop: Callable[[], None] | None = None) -> Subscription:
        """A new reader, subscribed from now on (``close()`` it). An agent's state as it is
        now counts as known to the reader: its snapshot, read after this, shows at least
        that. ``on_drop`` is called if the reader is dropped for reading nothing."""
        now = self._clock()
        sub = _Subscriber({i: (now, s) for i, s in self._known.items()}, now, on_drop)
        self._subs.add(sub)
        return Subscription(self, sub)

    async def _next(self, sub: _Subscriber) -> bytes | None:
        while not sub.closed:
            next_at = None if sub.now else self._release(sub, self._clock())
            if not sub.now:
                sub.ready.clear()
                timeout = None if next_at is None else max(0.0, next_at - self._clock())
                try:
                    await asyncio.wait_for(sub.ready.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                continue
            key, (msg, sig) = next(iter(sub.now.items()))
            del sub.now[key]
            if sig is not None:
                last = sub.last.get(key[1])
                if last is not None and last[1] == sig:
                    sub.budget -= len(msg)
                sub.last[key[1]] = (self._clock(), sig)
            sub.behind = 0
            return msg
        return None

    def close_all(self) -> None:
        """Ends every subscription, so shutdown does not wait on open SSE streams."""
        for sub in self._subs:
            sub.closed = True
            sub.ready.set()
        self._subs.clear()


class Subscription:
    """One reader's messages, as an async iterator that ends at ``close_all``."""

    def __init__(self, bus: EventBus, sub: _Subscriber) -> None:
        self._bus = bus
        self._sub = sub

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        msg = await self._bus._next(self._sub)
        if msg is None:
            raise StopAsyncIteration
        return msg

    def close(self) -> None:
        self._sub.closed = True
        self._bus._subs.discard(self._sub)


EVENTS = web.AppKey("events", EventBus)


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    """The cleanup_ctx entry of the event bus: before every publisher, closed after them."""
    bus = app[EVENTS] = EventBus()
    yield
    bus.close_all()
