"""The event bus coalesces per subscriber: at most one unsent message per object, the newest
state, agent messages at most once a second, status changes and task ends never held back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from fleetd.core.events import EventBus
from fleetd.core.wire import Agent, Task, next_revision


def agent(status: str = "online", **fields: Any) -> Agent:
    a = Agent(id="a1", name="gpu-1", url="http://x", status=status, **fields)  # type: ignore[arg-type]
    a.revision = next_revision()
    return a


def decode(msg: bytes) -> tuple[str, dict[str, Any]]:
    head, data = msg.decode().strip().split("\n")
    return head.removeprefix("event: "), msgspec.json.decode(data.removeprefix("data: "))


async def drain(messages: AsyncIterator[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """What the subscriber has now: it reads until it would have to wait."""
    out: list[tuple[str, dict[str, Any]]] = []
    while True:
        try:
            out.append(decode(await asyncio.wait_for(anext(messages), 0.2)))
        except asyncio.TimeoutError:
            return out


async def test_heartbeats_of_one_agent_within_a_second_make_one_message() -> None:
    bus = EventBus()
    messages = bus.subscribe()
    bus.publish("agent", agent(cpu_percent=1.0))  # not known to the reader yet: at once
    first = decode(await anext(messages))
    assert first[1]["cpu_percent"] == 1.0
    for i in range(2, 11):
        bus.publish("agent", agent(cpu_percent=float(i)))
    # Held for the rest of the second, then the newest only.
    kind, latest = decode(await asyncio.wait_for(anext(messages), 5))
    assert (kind, latest["cpu_percent"]) == ("agent", 10.0)
    assert await drain(messages) == []
    bus.close_all()


async def test_a_status_change_goes_at_once_and_replaces_what_was_held() -> None:
    bus = EventBus()
    messages = bus.subscribe()
    bus.publish("agent", agent())
    assert decode(await anext(messages))[1]["status"] == "online"
    for i in range(5):
        bus.publish("agent", agent(cpu_percent=float(i)))
    bus.publish("agent", agent("offline", cpu_percent=9.0))
    _, obj = decode(await asyncio.wait_for(anext(messages), 0.5))
    assert (obj["status"], obj["cpu_percent"]) == ("offline", 9.0)
    assert await drain(messages) == [], "the held heartbeats are not sent after it"
    bus.close_all()


async def test_an_unread_task_is_sent_once_as_it_is_now_and_its_end_is_never_lost() -> None:
    bus = EventBus()
    messages = bus.subscribe()
    bus.publish("agent", agent())
    await anext(messages)  # the reader is subscribed and idle
    t = Task(id="t1", agent_id="a1", model="m", status="downloading")
    for p in (0.1, 0.5, 0.9):
        t.progress = p
        bus.publish("task", t)
    t.status, t.progress = "completed", 1.0
    bus.publish("task", t)
    got = await drain(messages)
    assert [(k, o["status"], o["progress"]) for k, o in got] == [("task", "completed", 1.0)]
    bus.close_all()
