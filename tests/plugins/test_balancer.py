"""The built-in balancers, loaded through their entry points (``fleetd.balancer``)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fleetd.core.balancing import Balancer, Load
from fleetd.core.errors import StartupError
from fleetd.core.plugins import load_plugin

NAMES = ["least-busy", "round-robin"]


def make(name: str) -> Balancer:
    pool: Balancer = load_plugin("fleetd.balancer", name, "coordinator.balancer")()
    return pool


@pytest.mark.parametrize("name", NAMES)
def test_pool_membership(name: str) -> None:
    pool = make(name)
    assert pool.pick() is None and len(pool) == 0
    for i in range(5):
        pool.update(f"a{i}", Load())
    pool.update("a1", Load(reported_in_flight=3))  # a refresh, not a second member
    assert len(pool) == 5
    pool.discard("a3")
    pool.discard("never-there")
    pool.started("never-there")
    pool.finished("never-there")
    assert len(pool) == 4
    picks = {pool.pick() for _ in range(20)}
    assert "a3" not in picks and picks <= {"a0", "a1", "a2", "a4"}
    for agent_id in ("a0", "a1", "a2", "a4"):
        pool.discard(agent_id)
    assert pool.pick() is None


@pytest.mark.parametrize("name", NAMES)
def test_idle_equal_agents_take_turns(name: str) -> None:
    pool = make(name)
    for i in range(3):
        pool.update(f"a{i}", Load())
    counts: Counter[str | None] = Counter()
    for _ in range(30):
        agent_id = pool.pick()
        assert agent_id is not None
        pool.started(agent_id)
        pool.finished(agent_id)
        counts[agent_id] += 1
    assert counts == {"a0": 10, "a1": 10, "a2": 10}


def test_least_busy_prefers_fewest_in_flight_then_heartbeat_load_then_memory() -> None:
    pool = make("least-busy")
    pool.update("busy", Load(in_flight=2))
    pool.update("loaded", Load(reported_in_flight=4))
    pool.update("hot", Load(utilization=0.9, memory_free_bytes=10))
    pool.update("roomy", Load(utilization=0.9, memory_free_bytes=99))
    pool.update("idle", Load(memory_free_bytes=1))
    assert pool.pick() == "idle"
    pool.started("idle")  # now 1 in flight: everyone else with 0 goes first
    assert pool.pick() == "roomy"
    pool.started("roomy")
    assert pool.pick() == "hot"
    pool.started("hot")
    assert pool.pick() == "loaded"  # the last one with nothing in flight
    pool.started("loaded")
    assert pool.pick() == "idle"  # all at 1 but "busy": the lightest heartbeat load wins
    pool.finished("hot")
    assert pool.pick() == "hot"


def test_least_busy_counts_requests_and_survives_long_runs() -> None:
    pool = make("least-busy")
    for i in range(10):
        pool.update(f"a{i}", Load())
    held: list[str] = []
    for _ in range(9):
        agent_id = pool.pick()
        assert agent_id is not None and agent_id not in held
        pool.started(agent_id)
        held.append(agent_id)
    # nine busy, one idle: the idle one is picked whatever the order of arrival
    idle = pool.pick()
    assert idle is not None and idle not in held
    for _ in range(100_000):
        agent_id = pool.pick()
        assert agent_id is not None
        pool.started(agent_id)
        pool.finished(agent_id)
    assert len(pool._heap) <= 2 * len(pool) + 65  # type: ignore[attr-defined]


def test_least_busy_picks_the_least_loaded_however_many_heartbeats_came_between_picks() -> None:
    """Heartbeats between picks from one to thousands: each pick is what a scan of every
    member would choose, and memory stays bounded by the members (none waits for picks)."""
    pool = make("least-busy")
    rng = random.Random(7)
    members = [f"a{i}" for i in range(200)]
    loads: dict[str, Load] = {}
    in_flight: Counter[str] = Counter()
    for quiet in (1, 3, 30, 5_000, 2, 0, 400):
        for _ in range(quiet):
            agent_id = rng.choice(members)
            loads[agent_id] = Load(
                in_flight[agent_id], rng.randrange(3), rng.choice((0.0, 0.5, 0.9)), rng.randrange(4)
            )
            pool.update(agent_id, loads[agent_id])
            if rng.random() < 0.05:
                pool.discard(agent_id)
                del loads[agent_id]
        assert len(pool._heap) + len(pool._changed) <= 4 * len(members) + 100  # type: ignore[attr-defined]
        for _ in range(20):
            agent_id = pool.pick()
            best = min(
                (
                    in_flight[a],
                    loads[a].reported_in_flight,
                    loads[a].utilization,
                    -loads[a].memory_free_bytes,
                )
                for a in loads
            )
            assert agent_id is not None
            got = loads[agent_id]
            assert (
                in_flight[agent_id],
                got.reported_in_flight,
                got.utilization,
                -got.memory_free_bytes,
            ) == best
            pool.started(agent_id)
            in_flight[agent_id] += 1


def test_a_rejoining_agent_keeps_its_in_flight_count() -> None:
    pool = make("least-busy")
    pool.update("a", Load())
    pool.update("b", Load())
    pool.discard("a")
    pool.update("a", Load(in_flight=3))  # back from suspect with 3 requests still running
    assert pool.pick() == "b"


def test_unknown_balancer_names_the_key() -> None:
    with pytest.raises(StartupError) as err:
        load_plugin("fleetd.balancer", "fastest", "coordinator.balancer")
    assert "coordinator.balancer = 'fastest'" in str(err.value)
    assert "least-busy" in str(err.value) and "round-robin" in str(err.value)
