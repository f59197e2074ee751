"""In-process publish/subscribe for ``GET /api/events``, coalesced per subscriber.

Every message is a whole object (agent, task…) and carries its ``revision``, so a reader
keeps the newest copy and loses nothing by skipping an older one. Each subscriber therefore
holds at most one unsent message per object — a newer change replaces it — so what it sends
is always the latest state:

- task (and other) messages go out as soon as the subscriber reads; a task's progress
  arrives as often as its agent reports it (twice a second), its end is never skipped;
- an agent whose status changes (online ↔ offline) or that this subscriber has not seen yet
  goes out at once;
- any other agent change waits until a second has passed since that agent's last message to
  this subscriber (at most one per agent per second): readiness, status message, loaded
  models go out then, or up to ``WAKE_S`` later (the reader wakes on a coarse tick);
- a change of heartbeat figures alone (GPU memory and utilization, CPU, in-flight counts,
  last seen) also waits for that second, and then shares a budget of ``FIGURES_BYTES_PER_S``
  per subscriber, oldest first: with 5,000 agents heartbeating every 5 s (1,000 messages a
  second, about 1.4 MB/s) a dashboard gets each agent's figures every ~15 s instead.

A message is encoded when a subscriber sends it, not when it is published, so the many
agent changes replaced before they go cost no encoding. Publishers pass their live objects
(the registry's agents and tasks change in place): what goes out is the object as it is
then, the latest state, which its ``revision`` orders. A change sent by several subscribers
is encoded once, by the first.

Memory per subscriber is bounded by the number of objects, whatever the reader's speed. A
reader that takes nothing (a client that reads nothing) is dropped once the changes offered
to it since it last took a message pass ``MAX_UNREAD_BYTES``: its connection is closed, and
its browser's EventSource reconnects and reloads the state. Unsent changes have no bytes yet,
so each counts as the last message of its kind that any subscriber sent (``GUESS_BYTES``
before the first): an estimate, good enough to tell a dead reader.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
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
WAKE_S = 0.25
"""A reader waiting for held agents' seconds or the figures budget wakes on multiples of this,
taking all that came due meanwhile in one write: with 5,000 agents heartbeating, waking for
each agent's own second was 500 wake-ups a second, the dominant cost of an open dashboard."""
GUESS_BYTES = 1024
"""A change's size, for ``MAX_UNREAD_BYTES``, before any message of its kind was encoded."""
BATCH_BYTES = 64 << 10
"""What one write of ``Subscription.batches`` joins at most (more when one message is)."""

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


def _tick(t: float) -> float:
    """``t`` rounded up to a multiple of ``WAKE_S``."""
    return math.ceil(t / WAKE_S) * WAKE_S


class _Message:
    """One published change, shared by the subscribers it is offered to; ``data`` is its
    encoding, made by the first of them to send it."""

    __slots__ = ("data", "kind", "obj", "sig")

    def __init__(self, kind: str, obj: Any, sig: Signature | None) -> None:
        self.kind = kind
        self.obj = obj
        self.sig = sig
        """An agent's signature as published (pacing decides by it), else None."""
        self.data: bytes | None = None


class _Held:
    """An agent's latest state waiting, in one subscriber, for its second or the budget."""

    __slots__ = ("due", "msg", "paced")

    def __init__(self, msg: _Message, due: float) -> None:
        self.msg = msg
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
        "wake_at",
    )

    def __init__(
        self,
        last: dict[str, tuple[float, Signature]],
        at: float,
        on_drop: Callable[[], None] | None,
    ) -> None:
        self.now: dict[Key, _Message] = {}
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
        self.wake_at = math.inf
        """When the reader, waiting, wakes by itself (inf: not waiting, or only for news)."""
        self.closed = False
        self.behind = 0
        """Bytes of changes offered since the reader last took a message (estimated)."""
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
        self._sizes: dict[str, int] = {}
        """Kind -> size of its last message encoded: what an unsent change counts as."""
        self._clock = clock
        self._known: dict[str, Signature] = {}
        """Agent id -> signature as last published: what a new subscriber's snapshot shows."""

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, kind: str, obj: Any) -> None:
        """``obj`` is encoded when it is sent, as it is then: pass the live object (what
        it becomes is what a reader wants) or one left unchanged."""
        key = (kind, obj.get("id", "") if isinstance(obj, dict) else getattr(obj, "id", ""))
        sig = _signature(obj) if kind == "agent" else None
        if sig is not None:
            self._known[key[1]] = sig
        elif kind == "agent_removed":
            self._known.pop(key[1], None)
        if not self._subs:
            return
        msg = _Message(kind, obj, sig)
        size = self._sizes.get(kind, GUESS_BYTES)
        for sub in list(self._subs):
            if kind == "agent_removed":
                # A change still held would come after the removal and bring the agent back.
                sub.held.pop(key[1], None)
                sub.now.pop(("agent", key[1]), None)
            sub.behind += size
            if sub.behind > self._max:
                self._drop(sub)
            else:
                self._offer(sub, key, msg)

    def _offer(self, sub: _Subscriber, key: Key, msg: _Message) -> None:
        sig = msg.sig
        if sig is None or key in sub.now:
            sub.now[key] = msg  # not sent yet: it goes as it is then
            sub.ready.set()
            return
        agent_id = key[1]
        held = sub.held.get(agent_id)
        last = sub.last.get(agent_id)
        if last is None or last[1][0] != sig[0]:
            sub.held.pop(agent_id, None)
            sub.now[key] = msg
            sub.ready.set()
        elif held is not None:
            held.msg = msg
            if held.paced and sig != last[1]:
                # Waiting for the figures budget, but now more than figures changed.
                del sub.held[agent_id]
                sub.now[key] = msg
                sub.ready.set()
        else:
            due = last[0] + COALESCE_S
            sub.held[agent_id] = _Held(msg, due)
            heapq.heappush(sub.due, (due, agent_id))
            if _tick(due) < sub.wake_at:
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
            if last is not None and last[1] == held.msg.sig:
                held.paced = True
                sub.paced.append(agent_id)
            else:
                del sub.held[agent_id]
                sub.now[("agent", agent_id)] = held.msg
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
                sub.now[("agent", agent_id)] = held.msg
        waits = []
        if sub.due:
            waits.append(sub.due[0][0])
        if sub.paced and sub.budget <= 0:
            waits.append(now - sub.budget / FIGURES_BYTES_PER_S)
        return _tick(min(waits)) if waits else None

    def _encoded(self, msg: _Message) -> bytes:
        if msg.data is None:
            obj = self._enc.encode(msg.obj)
            msg.data = b"event: " + msg.kind.encode() + b"\ndata: " + obj + b"\n\n"
            self._sizes[msg.kind] = len(msg.data)
        return msg.data

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
                timer = None
                if next_at is not None:
                    delay = max(0.0, next_at - self._clock())
                    timer = asyncio.get_running_loop().call_later(delay, sub.ready.set)
                sub.wake_at = math.inf if next_at is None else next_at
                try:
                    await sub.ready.wait()
                finally:
                    sub.wake_at = math.inf
                    if timer is not None:
                        timer.cancel()
                continue
            return self._take(sub)
        return None

    def _take(self, sub: _Subscriber) -> bytes:
        """The first of ``sub.now``, encoded and accounted for as sent."""
        key, msg = next(iter(sub.now.items()))
        del sub.now[key]
        data = self._encoded(msg)
        if msg.sig is not None:
            last = sub.last.get(key[1])
            if last is not None and last[1] == msg.sig:
                sub.budget -= len(data)
            sub.last[key[1]] = (self._clock(), msg.sig)
        sub.behind = 0
        return data

    async def _batch(self, sub: _Subscriber, max_bytes: int) -> bytes | None:
        """The next message and those ready behind it (figures the budget allows included),
        up to about ``max_bytes``."""
        first = await self._next(sub)
        if first is None:
            return None
        parts = [first]
        size = len(first)
        while size < max_bytes and not sub.closed:
            if not sub.now:
                self._release(sub, self._clock())  # one paced agent per call, budget allowing
                if not sub.now:
                    break
            parts.append(data := self._take(sub))
            size += len(data)
        return b"".join(parts) if len(parts) > 1 else first

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

    async def batches(self, max_bytes: int = BATCH_BYTES) -> AsyncIterator[bytes]:
        """Every message ready at once joined in one chunk (one write, one send call for a
        whole registration group instead of one per agent), ending at ``close_all``."""
        while (chunk := await self._bus._batch(self._sub, max_bytes)) is not None:
            yield chunk

    def close(self) -> None:
        self._sub.closed = True
        self._bus._subs.discard(self._sub)


EVENTS = web.AppKey("events", EventBus)


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    """The cleanup_ctx entry of the event bus: before every publisher, closed after them."""
    bus = app[EVENTS] = EventBus()
    yield
    bus.close_all()
