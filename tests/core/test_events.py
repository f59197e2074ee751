"""The event bus coalesces per subscriber: at most one unsent message per object, the newest
state, agent messages at most once a second, status changes and task ends never held back;
a message is encoded when sent, once for every subscriber that sends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from fleetd.core.events import GUESS_BYTES, EventBus
from fleetd.core.wire import Agent, Task, next_revision


def agent(status: str = "online", **fields: Any) -> Agent:
    a = Agent(id="a1", name="gpu-1", url="http://x", status=status, **fields)  # type: ignore[arg-type]
    a.revision = next_revision()
    return a


def decode(msg: bytes) -> tuple[str, dict[str, Any]]:
    head, data = msg.decode().strip().split("\n")
    return head.removeprefix("event: "), msgspec.json.decode(data.removeprefix("data: "))


class CountingEncoder:
    """msgspec's JSON encoder, counting the objects it encodes."""

    def __init__(self) -> None:
        self.calls = 0
        self._enc = msgspec.json.Encoder()

    def encode(self, obj: Any) -> bytes:
        self.calls += 1
        return self._enc.encode(obj)


def counted(bus: EventBus, monkeypatch: pytest.MonkeyPatch) -> CountingEncoder:
    enc = CountingEncoder()
    monkeypatch.setattr(bus, "_enc", enc)
    return enc


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


async def test_changes_replaced_before_they_are_sent_are_never_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus()
    enc = counted(bus, monkeypatch)
    messages = bus.subscribe()
    a = agent(cpu_percent=0.0)
    bus.publish("agent", a)
    await anext(messages)
    for i in range(1, 1001):  # heartbeats of the registry's live agent, held for the second
        a.cpu_percent, a.revision = float(i), next_revision()
        bus.publish("agent", a)
        await asyncio.sleep(0)
    _, obj = decode(await asyncio.wait_for(anext(messages), 5))
    assert (obj["cpu_percent"], obj["revision"]) == (1000.0, a.revision)
    assert enc.calls == 2, "one encoding per message sent"
    bus.close_all()


async def test_a_message_is_encoded_when_sent_once_for_all_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus()
    enc = counted(bus, monkeypatch)
    first, second = bus.subscribe(), bus.subscribe()
    t = Task(id="t1", agent_id="a1", model="m", status="downloading")
    bus.publish("task", t)
    t.status = "completed"  # the live object changed since: it goes as it is now
    one, two = await anext(first), await anext(second)
    assert one == two
    assert decode(one)[1]["status"] == "completed"
    assert enc.calls == 1
    bus.close_all()


async def test_a_reader_that_reads_nothing_is_dropped_without_encoding_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(max_unread_bytes=100 * GUESS_BYTES)
    enc = counted(bus, monkeypatch)
    dropped: list[bool] = []
    bus.subscribe(on_drop=lambda: dropped.append(True))
    for i in range(100):  # nothing sent yet: each counts as GUESS_BYTES
        bus.publish("task", Task(id=f"t{i}", agent_id="a1", model="m"))
    assert (bus.dropped, dropped) == (0, [])
    bus.publish("task", Task(id="t100", agent_id="a1", model="m"))
    assert (bus.dropped, dropped, bus.subscribers) == (1, [True], 0)
    assert enc.calls == 0
    bus.close_all()


async def test_unsent_changes_count_as_the_last_message_of_their_kind() -> None:
    bus = EventBus(max_unread_bytes=100_000)
    reader = bus.subscribe()
    big = agent(status_message="s" * 20_000)
    bus.publish("agent", big)
    assert len(await anext(reader)) > 20_000
    reader.close()
    stuck = bus.subscribe()
    published = 0
    while not bus.dropped and published < 100:
        big.revision = next_revision()
        bus.publish("agent", big)
        published += 1
    assert published == 5, "dropped past 100 KB of ~20 KB changes, not 100 × GUESS_BYTES"
    assert await anext(stuck, None) is None


async def test_a_removed_agent_is_not_brought_back_by_a_change_held_before() -> None:
    bus = EventBus()
    messages = bus.subscribe()
    bus.publish("agent", agent())
    await anext(messages)
    bus.publish("agent", agent(cpu_percent=5.0))  # held for the rest of its second
    bus.publish("agent_removed", {"id": "a1"})
    got = await asyncio.wait_for(anext(messages), 0.5)
    assert decode(got) == ("agent_removed", {"id": "a1"})
    await asyncio.sleep(1.1)  # the held change's second has passed
    assert await drain(messages) == []
    bus.close_all()


async def test_two_removals_before_the_reader_reads_are_both_sent() -> None:
    bus = EventBus()
    messages = bus.subscribe()
    bus.publish("agent_removed", {"id": "a1"})
    bus.publish("agent_removed", {"id": "a2"})
    got = await drain(messages)
    assert got == [("agent_removed", {"id": "a1"}), ("agent_removed", {"id": "a2"})]
    bus.close_all()


async def test_messages_ready_together_go_in_one_chunk_up_to_its_limit() -> None:
    bus = EventBus()
    messages = bus.subscribe()
    for i in range(5):
        bus.publish("task", Task(id=f"t{i}", agent_id="a1", model="m"))
    chunks = messages.batches(max_bytes=1)  # every message passes the limit on its own
    first = await anext(chunks)
    assert [decode(first)[1]["id"]] == ["t0"]
    chunks = messages.batches()
    rest = (await anext(chunks)).decode().strip().split("\n\n")
    assert [msgspec.json.decode(m.split("data: ")[1])["id"] for m in rest] == [
        "t1",
        "t2",
        "t3",
        "t4",
    ]
    bus.close_all()
    assert await anext(chunks, None) is None


async def test_held_changes_coming_due_over_a_second_go_in_a_few_writes() -> None:
    """Agents last sent at different moments: their held figures come due one by one, and
    the reader takes them on a coarse tick, not one wake-up (and write) per agent."""
    bus = EventBus()
    messages = bus.subscribe()
    chunks = messages.batches()
    fleet = [Agent(id=f"a{i}", name=f"gpu-{i}", url="http://x") for i in range(40)]
    for a in fleet:  # first messages 25 ms apart: their seconds end 25 ms apart
        bus.publish("agent", a)
        await anext(chunks)
        await asyncio.sleep(0.025)
    for a in fleet:
        a.cpu_percent, a.revision = 50.0, next_revision()
        bus.publish("agent", a)
    got: list[bytes] = []
    while sum(c.count(b"event: agent") for c in got) < len(fleet):
        got.append(await asyncio.wait_for(anext(chunks), 3))
    assert len(got) <= 8, f"{len(got)} writes for {len(fleet)} held changes"
    bus.close_all()
