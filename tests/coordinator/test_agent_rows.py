"""Registrations written in groups: each registration answers once its agent is written, a
group that cannot be written fails only its own registrations, and each group logs one line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from fleetd.coordinator.registry import Registry
from fleetd.core.events import EventBus
from fleetd.core.gpu import Gpu
from fleetd.core.store import SqliteStore, StoreUnavailable
from fleetd.core.wire import Agent, Registration


class HeldStore(SqliteStore):
    """Each ``save_agents`` waits until the test releases it; the ones listed in ``fail``
    (by call number, from 1) then fail as a full disk does."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[list[str]] = []
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.fail: set[int] = set()

    async def save_agents(self, agents: Iterable[Agent]) -> None:
        agents = list(agents)
        self.calls.append([a.name for a in agents])
        self.called.set()
        await self.release.wait()
        if len(self.calls) in self.fail:
            raise StoreUnavailable("the database cannot be written: database or disk is full")
        await super().save_agents(agents)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HeldStore]:
    s = HeldStore(tmp_path / "fleetd.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def registration(name: str) -> Registration:
    gpus = [Gpu(name="Sim H100", memory_bytes=80 << 30)]
    return Registration(name=name, url=f"http://127.0.0.1:9/{name}", gpus=gpus)


async def registered_while_held(registry: Registry, names: list[str]) -> list[asyncio.Task[Agent]]:
    """Registrations started while a write is held: one turn of the loop takes each to its
    wait for the next write (nothing else is awaited before it)."""
    tasks = [asyncio.create_task(registry.register(registration(n), total_models=1)) for n in names]
    await asyncio.sleep(0)
    assert all(any(a.name == n for a in registry.agents.values()) for n in names)
    return tasks


async def test_a_group_that_cannot_be_written_fails_only_its_own_registrations(
    store: HeldStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetd.registry")
    registry = Registry(store, EventBus(), heartbeat_timeout_s=20.0)
    store.fail = {2}
    first = asyncio.create_task(registry.register(registration("first"), total_models=1))
    await store.called.wait()  # its write is under way, held
    second = await registered_while_held(registry, ["b", "c", "d"])
    store.release.set()
    await first
    for t in second:
        with pytest.raises(StoreUnavailable):
            await t
    third = await registry.register(registration("e"), total_models=1)

    assert store.calls == [["first"], ["b", "c", "d"], ["e"]]
    assert third.status == "online"
    lines = [r.getMessage() for r in caplog.records if "registered" in r.getMessage()]
    by_name = {x.name: x for x in registry.agents.values()}
    assert lines == [
        f"agent first ({by_name['first'].id}) registered at http://127.0.0.1:9/first with 1 GPU(s)",
        f"agent e ({by_name['e'].id}) registered at http://127.0.0.1:9/e with 1 GPU(s)",
    ]
    # The failed ones are known in memory and written by the next flush that works.
    await registry.flush()
    assert sorted(x.name for x in await store.load_agents()) == ["b", "c", "d", "e", "first"]


async def test_registrations_that_arrive_together_are_written_and_logged_together(
    store: HeldStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetd.registry")
    registry = Registry(store, EventBus(), heartbeat_timeout_s=20.0)
    first = asyncio.create_task(registry.register(registration("first"), total_models=1))
    await store.called.wait()
    rest = await registered_while_held(registry, ["gpu-0", "gpu-1", "gpu-2"])
    store.release.set()
    await asyncio.gather(first, *rest)

    assert store.calls == [["first"], ["gpu-0", "gpu-1", "gpu-2"]]
    lines = [r.getMessage() for r in caplog.records if "registered" in r.getMessage()]
    group = ", ".join(f"{t.result().name} ({t.result().id}) at {t.result().url}" for t in rest)
    assert lines[1:] == [f"3 agents registered: {group}"]
    assert lines[0].startswith("agent first (")
