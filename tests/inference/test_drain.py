"""Drain and undrain (issue 22 item 3): requests in flight finish, no new ones reach a draining
agent, and the state outlives restarts of the agent and of the coordinator."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import restart_coordinator
from tests.inference.conftest import CHAT, MESSAGES, SUPPORTED, agents, requests_served, start
from tests.procs import admin, wait_until

SLOW = ("--token-delay-ms", "150")
"""8 chunks of 150 ms: each reply takes over a second, long enough to drain under it."""


def stream_chat(url: str) -> tuple[int, str]:
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        return r.status_code, r.read().decode()


def agent_named(coord_url: str, name: str) -> dict[str, Any]:
    with admin(coord_url) as c:
        found = [a for a in c.get("/api/agents").json()["agents"] if a["name"] == name]
    assert len(found) == 1, found
    return found[0]


def busy(sim_url: str) -> bool:
    state = httpx.get(sim_url + "/_sim/state", timeout=5).json()
    return any(m["busy"] for m in state["loaded"])


def test_drain_with_requests_in_flight_fails_no_request(fleet: Fleet) -> None:
    s = start(fleet, 2, sim_args=SLOW)
    drained, other = s.sims
    a = agent_named(s.coordinator.url, "gpu-0")
    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(stream_chat, s.coordinator.url) for _ in range(6)]
        wait_until(lambda: busy(drained.url), what="a request in flight on gpu-0")
        with admin(s.coordinator.url) as c:
            r = c.post(f"/api/agents/{a['id']}/drain")
        assert r.status_code == 200, r.text
        assert r.json()["draining"] is True
        for f in first:
            status, text = f.result()
            assert status == 200, text
            assert "data: [DONE]" in text  # the reply under way ran to its end
        before = requests_served(drained)
        second = [pool.submit(stream_chat, s.coordinator.url) for _ in range(6)]
        for f in second:
            status, text = f.result()
            assert status == 200, text
    assert requests_served(drained) == before
    assert requests_served(other) >= 6
    assert agent_named(s.coordinator.url, "gpu-0")["draining"] is True
    assert "Traceback" not in s.coordinator.log


def test_drained_agent_stays_drained_across_restarts_then_undrains(fleet: Fleet) -> None:
    """Drain, upgrade the host (restart its agent), restart the coordinator: still drained;
    undrain: it serves again."""
    s = start(fleet, 2, sim_args=SLOW)
    coord = s.coordinator
    a = agent_named(coord.url, "gpu-0")
    with admin(coord.url) as c:
        assert c.post(f"/api/agents/{a['id']}/drain").status_code == 200
    old = s.agents[0]
    old.stop()
    fleet.agent(
        coord.url,
        s.sims[0].url,
        data_dir=old.data_dir,  # type: ignore[attr-defined]
        name="gpu-0",
        registry_url=s.sims[0].url,
    )
    wait_until(
        lambda: (
            agent_named(coord.url, "gpu-0")["status"] == "online"
            and not agent_named(coord.url, "gpu-0")["initializing"]
        ),
        what="gpu-0 back after its restart",
    )
    again = agent_named(coord.url, "gpu-0")
    assert again["id"] == a["id"]
    assert again["draining"] is True
    coord.stop()
    coord = restart_coordinator(
        fleet, coord, supported_models=SUPPORTED, registry_url="http://127.0.0.1:9"
    )
    assert agent_named(coord.url, "gpu-0")["draining"] is True
    wait_until(
        lambda: all(x["status"] == "online" and not x["initializing"] for x in agents(coord)),
        what="both agents back with the coordinator",
    )
    with ThreadPoolExecutor(4) as pool:
        for status, text in pool.map(lambda _: stream_chat(coord.url), range(4)):
            assert status == 200, text
    assert requests_served(s.sims[0]) == 0
    with admin(coord.url) as c:
        r = c.post(f"/api/agents/{a['id']}/undrain")
    assert r.status_code == 200 and r.json()["draining"] is False

    def gpu0_serves() -> bool:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: stream_chat(coord.url), range(4)))
        return requests_served(s.sims[0]) > 0

    wait_until(gpu0_serves, timeout=30, what="gpu-0 serving again after undrain")


def test_drain_unknown_agent_is_404(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    with admin(coord.url) as c:
        r = c.post("/api/agents/nosuchagent/drain")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_agent"
