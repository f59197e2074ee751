"""The registry's offline sweep: it reads only the agents that expired, oldest contact first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetd.coordinator.registry import Registry
from fleetd.core.events import EventBus
from fleetd.core.gpu import Gpu
from fleetd.core.store import SqliteStore
from fleetd.core.wire import Agent, Heartbeat, Registration

TIMEOUT_S = 1.0
"""Long enough that the sleeps below cannot overshoot it on a busy 2-core machine."""


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    store = SqliteStore(tmp_path / "fleetd.db")
    await store.open()
    try:
        yield Registry(store, EventBus(), heartbeat_timeout_s=TIMEOUT_S)
    finally:
        await store.close()


async def register(registry: Registry, name: str) -> Agent:
    gpus = [Gpu(name="Sim H100", memory_bytes=80 << 30)]
    return await registry.register(
        Registration(name=name, url=f"http://127.0.0.1:9/{name}", gpus=gpus), total_models=1
    )


def beat(registry: Registry, agent: Agent) -> None:
    hb = Heartbeat(initializing=False, ready_models=1, total_models=1)
    assert registry.heartbeat(agent.id, hb) is agent


async def test_sweep_offlines_the_silent_agent_not_the_first_registered(
    registry: Registry,
) -> None:
    offline: list[str] = []
    registry.on_offline.append(lambda a: offline.append(a.name))
    first = await register(registry, "first")
    silent = await register(registry, "silent")
    touched = await register(registry, "touched")
    await asyncio.sleep(0.6 * TIMEOUT_S)
    # The first registered is heard from again, so it is no longer the oldest contact.
    beat(registry, first)
    registry.touch(touched.id)
    await asyncio.sleep(0.6 * TIMEOUT_S)
    registry.sweep()
    assert offline == ["silent"]
    assert (first.status, silent.status, touched.status) == ("online", "offline", "online")
    registry.sweep()
    assert offline == ["silent"], "an agent already offline is not reported again"


async def test_an_agent_that_came_back_goes_offline_again_when_silent(
    registry: Registry,
) -> None:
    offline: list[str] = []
    registry.on_offline.append(lambda a: offline.append(a.name))
    agent = await register(registry, "flaky")
    await asyncio.sleep(1.2 * TIMEOUT_S)
    registry.sweep()
    registry.touch(agent.id)  # contact short of a heartbeat does not bring it back
    assert agent.status == "offline"
    beat(registry, agent)
    assert agent.status == "online"
    registry.sweep()
    assert agent.status == "online"
    await asyncio.sleep(1.2 * TIMEOUT_S)
    registry.sweep()
    assert offline == ["flaky", "flaky"]
