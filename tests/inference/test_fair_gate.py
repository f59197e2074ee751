"""Fairness in the gate (issue 23): with ``max_requests_per_agent`` the fleet saturates in the
coordinator, and waiting requests are served round-robin across keys, so a flood from one key
does not starve another."""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import httpx
import pytest

from fleetd.config import CoordinatorConfig
from fleetd.coordinator.fairgate import FairQueue
from fleetd.coordinator.gate import Gate
from fleetd.coordinator.inventory import Inventory
from fleetd.coordinator.metrics import Metrics
from fleetd.coordinator.pools import Pools
from fleetd.core.errors import ApiError
from fleetd.core.plugins import load_plugin
from fleetd.core.store import Store
from fleetd.core.wire import Agent
from tests.conftest import Fleet
from tests.inference.conftest import CHAT, MESSAGES, start
from tests.procs import admin, wait_until


def test_keys_take_turns_and_a_returning_key_goes_first() -> None:
    loop = asyncio.new_event_loop()
    try:
        q = FairQueue()
        heavy = [q.add("heavy", "m", loop.create_future()) for _ in range(3)]
        light = q.add("light", "m", loop.create_future())  # had nothing waiting: goes first
        slots = iter(["a1", "a2"])
        q.serve(lambda model: next(slots, None))
        assert light[2].result() == "a1" and heavy[0][2].result() == "a2"
        assert not heavy[1][2].done() and len(q) == 2
        # A cancelled waiter is skipped and dropped, not handed an agent.
        heavy[1][2].cancel()
        q.serve(lambda model: "a3")
        assert heavy[2][2].result() == "a3" and len(q) == 0
    finally:
        loop.close()


def gateway(**settings: Any) -> Gate:
    cls = load_plugin("fleetd.balancer", "least-busy", "coordinator.balancer")
    c = CoordinatorConfig(supported_models=[CHAT], **settings)
    inventory = Inventory(cast(Store, None))  # never flushed here
    metrics = Metrics()
    pools = Pools(c.supported_models, {}, cls, metrics, inventory, (), c.max_requests_per_agent)
    return Gate(pools, c.queue_limit, c.queue_timeout_s, metrics)


async def test_a_full_agent_holds_requests_which_take_turns_by_key() -> None:
    gw = gateway(max_requests_per_agent=1, queue_timeout_s=5)
    gw.pools.agent_changed(Agent(id="a1", name="a1", url="http://x", initializing=False))
    first = await gw.acquire(CHAT, "heavy")  # the one slot
    served: list[str] = []

    async def request(key: str, i: int) -> None:
        await gw.acquire(CHAT, key)
        served.append(f"{key}{i}")

    tasks = [asyncio.create_task(request("heavy", i)) for i in range(4)]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(request("light", 0)))
    await asyncio.sleep(0.01)
    assert served == []
    gw.pools.end(first)
    for _ in range(5):
        await asyncio.sleep(0.01)
        gw.pools.end("a1")
    await asyncio.gather(*tasks)
    assert served[0] == "light0"  # not behind heavy's four
    assert served[1:] == ["heavy0", "heavy1", "heavy2", "heavy3"]


async def test_a_wait_for_a_full_fleet_ends_in_503_fleet_busy() -> None:
    gw = gateway(max_requests_per_agent=1, queue_timeout_s=0.1)
    gw.pools.agent_changed(Agent(id="a1", name="a1", url="http://x", initializing=False))
    await gw.acquire(CHAT)
    with pytest.raises(ApiError) as err:
        await gw.acquire(CHAT)
    assert err.value.status == 503 and err.value.code == "fleet_busy"
    assert "max_requests_per_agent" in err.value.message and err.value.headers["Retry-After"]


def _queue_depth(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r"^fleetd_gate_queue_depth (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_flood_from_one_key_does_not_starve_another(fleet: Fleet) -> None:
    setup = start(fleet, sim_args=("--token-delay-ms", "40"), max_requests_per_agent=1)
    url = setup.coordinator.url
    with admin(url) as a:
        heavy = a.post("/api/keys", json={"name": "heavy"}).json()["key"]
        light = a.post("/api/keys", json={"name": "light"}).json()["key"]
    done: list[str] = []
    body = {"model": CHAT, "messages": MESSAGES}
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def ask(key: str, label: str) -> None:
            r = await c.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 200, r.text
            done.append(label)

        flood = [asyncio.create_task(ask(heavy, f"heavy{i}")) for i in range(8)]
        await asyncio.to_thread(
            wait_until, lambda: _queue_depth(url) >= 7, 20, 0.05, "heavy's backlog in the gate"
        )
        await ask(light, "light")
        assert len(done) <= 3, done  # it overtook heavy's backlog (arrival order: 9th)
        await asyncio.gather(*flood)
