"""The registry's offline sweep and suspect watch, driven by a fake clock: the sweep reads
only the agents that expired, oldest contact first, and reports each change once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetd.coordinator.registry import Registry
from fleetd.core.events import EventBus
from fleetd.core.gpu import Gpu
from fleetd.core.store import SqliteStore
from fleetd.core.wire import Agent, Heartbeat, Registration

TIMEOUT_S = 20.0
INTERVAL_S = 5.0
"""The agents' heartbeat interval: suspect after 2.5 of them (12.5 s) without contact."""


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(tmp_path: Path, clock: Clock) -> AsyncIterator[Registry]:
    store = SqliteStore(tmp_path / "fleetd.db")
    await store.open()
    try:
        yield Registry(store, EventBus(), heartbeat_timeout_s=TIMEOUT_S, clock=clock)
    finally:
        await store.close()


async def register(registry: Registry, name: str) -> Agent:
    gpus = [Gpu(name="Sim H100", memory_bytes=80 << 30)]
    reg = Registration(
        name=name, url=f"http://127.0.0.1:9/{name}", gpus=gpus, heartbeat_interval_s=INTERVAL_S
    )
    return await registry.register(reg, total_models=1)


def beat(registry: Registry, agent: Agent) -> None:
    hb = Heartbeat(initializing=False, ready_models=1, total_models=1)
    assert registry.heartbeat(agent.id, hb) is agent


def names(seen: list[Agent]) -> list[str]:
    return [a.name for a in seen]


async def test_sweep_offlines_the_silent_agent_not_the_first_registered(
    registry: Registry, clock: Clock
) -> None:
    offline: list[Agent] = []
    registry.on_offline.append(offline.append)
    first = await register(registry, "first")
    silent = await register(registry, "silent")
    touched = await register(registry, "touched")
    clock.advance(0.6 * TIMEOUT_S)
    # The first registered is heard from again, so it is no longer the oldest contact.
    beat(registry, first)
    registry.touch(touched.id)
    clock.advance(0.6 * TIMEOUT_S)
    registry.sweep()
    assert names(offline) == ["silent"]
    assert (first.status, silent.status, touched.status) == ("online", "offline", "online")
    registry.sweep()
    assert names(offline) == ["silent"], "an agent already offline is not reported again"


async def test_nobody_goes_offline_a_moment_before_the_timeout(
    registry: Registry, clock: Clock
) -> None:
    offline: list[Agent] = []
    registry.on_offline.append(offline.append)
    agent = await register(registry, "steady")
    clock.advance(TIMEOUT_S - 0.01)
    registry.sweep()
    assert offline == [] and agent.status == "online"
    clock.advance(0.02)
    registry.sweep()
    assert names(offline) == ["steady"]


async def test_an_agent_that_came_back_goes_offline_again_when_silent(
    registry: Registry, clock: Clock
) -> None:
    offline: list[Agent] = []
    online: list[Agent] = []
    registry.on_offline.append(offline.append)
    registry.on_online.append(online.append)
    agent = await register(registry, "flaky")
    clock.advance(1.2 * TIMEOUT_S)
    registry.sweep()
    registry.touch(agent.id)  # contact short of a heartbeat does not bring it back
    assert agent.status == "offline"
    beat(registry, agent)
    assert agent.status == "online"
    assert names(online) == ["flaky", "flaky"], "registered, then back online"
    registry.sweep()
    assert agent.status == "online"
    clock.advance(1.2 * TIMEOUT_S)
    registry.sweep()
    assert names(offline) == ["flaky", "flaky"]


async def test_two_missed_heartbeats_make_an_agent_suspect_once(
    registry: Registry, clock: Clock
) -> None:
    silent: list[Agent] = []
    registry.on_silent.append(silent.append)
    quiet = await register(registry, "quiet")
    busy = await register(registry, "busy")
    for _ in range(4):  # busy heartbeats on time; quiet says nothing
        clock.advance(INTERVAL_S * 0.6)
        beat(registry, busy)
        registry.sweep()
    assert silent == [], "2.4 intervals of silence are not yet two missed heartbeats"
    clock.advance(INTERVAL_S * 0.2)
    beat(registry, busy)
    registry.sweep()
    assert names(silent) == ["quiet"] and quiet.status == "online"
    clock.advance(INTERVAL_S)
    beat(registry, busy)
    registry.sweep()
    assert names(silent) == ["quiet"], "reported once, not at every sweep"
    # Heard from again, then silent again: suspect again.
    beat(registry, quiet)
    clock.advance(2.5 * INTERVAL_S + 0.01)
    beat(registry, busy)
    registry.sweep()
    assert names(silent) == ["quiet", "quiet"]
