"""What an operator changes through one coordinator reaches the others at once, no restart:
the supported list."""

from __future__ import annotations

from typing import Any

from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SMALL,
    Events,
    tasks,
    wait_agent,
)
from tests.ha.conftest import agent_on, pair
from tests.procs import Proc, admin, wait_until

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
