"""What an operator changes through one coordinator reaches the others at once, no restart:
the supported list, a drain, a removed agent."""

from __future__ import annotations

from typing import Any

from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SMALL,
    Events,
    agents,
    tasks,
    wait_agent,
)
from tests.ha.conftest import agent_on, pair
from tests.procs import Proc, admin, wait_until
from tests.web.conftest import closed_port_url

EXTRA = "nomic-embed-text:latest"


def _get(c: Proc, path: str) -> Any:
    with admin(c.url) as cl:
        r = cl.get(path)
        r.raise_for_status()
        return r.json()


def _fleet_catalog(c: Proc) -> set[str]:
    listing = _get(c, "/api/models/catalog")
    assert listing["source"] == "fleet", listing
    return {m["name"] for m in listing["models"]}


def _events(ev: Events, kind: str) -> list[dict[str, Any]]:
    return [obj for _, k, obj in list(ev.items) if k == kind]


def test_a_supported_list_put_through_one_is_applied_at_once_by_the_other(
    fleet: Fleet, pg_url: str
) -> None:
    sim = fleet.sim(*PREINSTALLED)
    a, b = pair(fleet, pg_url)
    fleet.agent(b.url, ollama=sim.url, registry_url=sim.url)  # heartbeats to B only
    agent_id = wait_agent(b, initializing=False)["id"]
    wait_until(lambda: agent_on(a, agent_id), what="the agent on A")
    on_b = Events(b.url)
    try:
        wanted = [*SMALL, EXTRA]
        with admin(a.url) as cl:
            assert cl.put("/api/supported-models", json={"models": wanted}).status_code == 200

        wait_until(
            lambda: {"models": wanted} in _events(on_b, "supported"),
            what="the supported event on B's /api/events",
        )
        assert _get(b, "/api/supported-models")["models"] == wanted
        assert [m["id"] for m in _get(b, "/v1/models")["data"]] == wanted
        # B's heartbeat replies carry the new list: the agent counts three models, and holds
        # them once A (where the list changed) has ordered the new one.
        wait_until(
            lambda: (
                (x := agent_on(b, agent_id)) and (x["total_models"], x["ready_models"]) == (3, 3)
            ),
            30,
            what="the agent holding the three models, seen from B",
        )
    finally:
        on_b.close()
    # Ordered once, by A: B does not order it a second time.
    for c in (b, a):
        wait_until(
            lambda c=c: [t["status"] for t in tasks(c) if t["model"] == EXTRA] == ["completed"],
            what="one task for the new model, completed",
        )


def test_drain_and_undrain_through_one_show_on_the_other(fleet: Fleet, pg_url: str) -> None:
    sim = fleet.sim(*PREINSTALLED)
    a, b = pair(fleet, pg_url)
    # Heartbeats to B only, so often that B's copy of the agent is always newer than A's
    # drain by the time B reads it: the drain must still win.
    fleet.agent(b.url, ollama=sim.url, registry_url=sim.url, heartbeat_interval_s=0.01)
    agent_id = wait_agent(b, initializing=False)["id"]
    wait_until(lambda: agent_on(a, agent_id), what="the agent on A")
    for action, draining in (("drain", True), ("undrain", False)):
        with admin(a.url) as cl:
            assert cl.post(f"/api/agents/{agent_id}/{action}").status_code == 200
        wait_until(
            lambda d=draining: (x := agent_on(b, agent_id)) and x["draining"] is d,
            what=f"the {action} seen from B",
        )
        assert agent_on(a, agent_id)["draining"] is draining  # type: ignore[index]


def test_an_agent_removed_through_one_disappears_from_the_other(fleet: Fleet, pg_url: str) -> None:
    sim = fleet.sim(*PREINSTALLED, "--preinstall", EXTRA)
    # Online until removed; with the library down, the catalog lists the fleet's installed
    # models: the inventory, seen from outside.
    a, b = pair(fleet, pg_url, heartbeat_timeout_s=60, library_url=closed_port_url())
    agent = fleet.agent(b.url, ollama=sim.url, registry_url=sim.url)
    agent_id = wait_agent(b, initializing=False)["id"]
    wait_until(lambda: agent_on(a, agent_id), what="the agent on A")
    assert _fleet_catalog(b) == {"llama3.2", "qwen2.5", "nomic-embed-text"}
    on_b = Events(b.url)
    try:
        assert agent.stop() == 0  # so that it does not register anew
        with admin(a.url) as cl:
            r = cl.delete(f"/api/agents/{agent_id}", params={"force": "true"})
        assert r.status_code == 200, r.text

        wait_until(lambda: agents(b) == [], what="the agent gone from B's list")
        wait_until(
            lambda: {"id": agent_id} in _events(on_b, "agent_removed"),
            what="agent_removed on B's /api/events",
        )
    finally:
        on_b.close()
    assert _get(b, "/api/models/matrix")["agents"] == []
    assert _fleet_catalog(b) == set()
    with admin(b.url) as cl:
        assert cl.get(f"/api/agents/{agent_id}/models").status_code == 404
    assert agents(a) == []
