"""Failover when no other agent is ready yet: the request waits in the gate for one, and an
agent known ready before a coordinator restart is a candidate before its first heartbeat."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import restart_coordinator
from tests.inference.conftest import (
    CHAT,
    MESSAGES,
    SUPPORTED,
    agents,
    requests_served,
    sim_post,
    start,
    wait_ready,
)
from tests.procs import wait_until

SLOW_HEARTBEATS = {"heartbeat_interval_s": 300}
"""Agents that send a heartbeat only when their readiness changes: what the coordinator knows
of them stays as it was (the sim of one can go down unnoticed)."""


def chat(url: str) -> httpx.Response:
    body = {"model": CHAT, "messages": MESSAGES}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def preinstalled(fleet: Fleet, *extra: str) -> Any:
    return fleet.sim(*(a for m in SUPPORTED for a in ("--preinstall", m)), *extra)


def test_failover_with_no_other_ready_agent_waits_in_the_gate_for_one(fleet: Fleet) -> None:
    coord = fleet.coordinator(
        supported_models=SUPPORTED, heartbeat_timeout_s=900, queue_timeout_s=60
    )
    broken = preinstalled(fleet)
    fleet.agent(coord.url, broken.url, name="gpu-0", registry_url=broken.url, **SLOW_HEARTBEATS)
    wait_ready(coord, 1)
    late = fleet.sim("--bandwidth", "1")  # its agent stays initializing until released
    fleet.agent(coord.url, late.url, name="gpu-1", registry_url=late.url, **SLOW_HEARTBEATS)
    wait_until(lambda: len(agents(coord)) == 2, what="the second agent registered")
    sim_post(broken, "/_sim/down")  # gpu-0 still counts as ready: its next heartbeat is far
    outcome: dict[str, httpx.Response] = {}
    asking = threading.Thread(target=lambda: outcome.setdefault("r", chat(coord.url)))
    asking.start()
    wait_until(lambda: "suspect" in coord.log, what="the failure on gpu-0")
    sim_post(late, "/_sim/settings", {"bandwidth_bps": "2000MB"})  # gpu-1 becomes ready
    asking.join(60)
    r = outcome["r"]
    assert r.status_code == 200, r.text
    assert requests_served(late) == 1
    assert "Traceback" not in coord.log


def test_after_a_coordinator_restart_agents_ready_before_are_candidates(fleet: Fleet) -> None:
    settings: dict[str, Any] = {
        "supported_models": SUPPORTED,
        "heartbeat_timeout_s": 900,
        "queue_timeout_s": 3,
    }
    coord = fleet.coordinator(**settings)
    sims = [preinstalled(fleet) for _ in range(2)]
    for i, sim in enumerate(sims):
        fleet.agent(coord.url, sim.url, name=f"gpu-{i}", registry_url=sim.url, **SLOW_HEARTBEATS)
    wait_ready(coord, 2)
    coord.stop()
    sim_post(sims[0], "/_sim/down")
    coord = restart_coordinator(fleet, coord, **settings)
    # No agent has sent a heartbeat to this coordinator: both are candidates as the store
    # knew them, and the one whose Ollama is down fails over to the other.
    for _ in range(3):
        r = chat(coord.url)
        assert r.status_code == 200, r.text
    assert requests_served(sims[1]) == 3
    assert "Traceback" not in coord.log


def test_requests_on_a_frozen_agent_move_on_once_it_misses_two_heartbeats(fleet: Fleet) -> None:
    """A stopped agent (SIGSTOP) accepts connections but answers nothing, heartbeats
    included: long before ``heartbeat_timeout_s`` it is suspect, the requests waiting for its
    first byte go to the other agent, and it serves again once it heartbeats again."""
    setup = start(fleet, 2, balancer="round-robin", heartbeat_timeout_s=120)
    coord, frozen = setup.coordinator, setup.agents[0]
    os.killpg(frozen.popen.pid, signal.SIGSTOP)
    try:
        with httpx.Client(timeout=30) as c, ThreadPoolExecutor(4) as pool:
            body = {"model": CHAT, "messages": MESSAGES}
            ask = partial(c.post, coord.url + "/v1/chat/completions", json=body)
            codes = [f.result().status_code for f in [pool.submit(ask) for _ in range(4)]]
    finally:
        os.killpg(frozen.popen.pid, signal.SIGCONT)
    assert codes == [200] * 4
    assert requests_served(setup.sims[1]) == 4
    assert "missed two heartbeats" in coord.log and "elsewhere" in coord.log
    assert all(a["status"] == "online" for a in agents(coord))  # suspect, never offline

    def back() -> bool:
        assert chat(coord.url).status_code == 200
        return requests_served(setup.sims[0]) > 0

    wait_until(back, what="the thawed agent serving again")
    assert "Traceback" not in coord.log
