"""The supported list at runtime (issue 22 item 5): GET/PUT /api/supported-models, kept in the
database, agents download what they lack and let go of what left the list."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Fleet
from tests.ctl.conftest import ctl
from tests.distribution.conftest import (
    SMALL,
    ready_fleet,
    restart_coordinator,
    sim_state,
    tasks,
    wait_agent,
)
from tests.procs import Proc, admin, wait_until

EXTRA = "nomic-embed-text:latest"
HERMETIC = "http://127.0.0.1:9"


def supported(c: Proc) -> list[str]:
    with admin(c.url) as cl:
        r = cl.get("/api/supported-models")
    assert r.status_code == 200, r.text
    models: list[str] = r.json()["models"]
    return models


def v1_models(c: Proc) -> list[str]:
    return [m["id"] for m in httpx.get(c.url + "/v1/models", timeout=5).json()["data"]]


def loaded(sim: Proc) -> dict[str, Any]:
    return {m["name"]: m for m in sim_state(sim)["loaded"]}


def test_put_supported_orders_new_models_and_releases_removed_ones(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet)
    assert supported(c) == SMALL
    with admin(c.url) as cl:
        short = EXTRA.removesuffix(":latest")  # normalized in the answer
        r = cl.put("/api/supported-models", json={"models": [*SMALL, short]})
    assert r.status_code == 200, r.text
    assert r.json()["models"] == [*SMALL, EXTRA]
    wait_until(lambda: tasks(c, model=EXTRA, status="completed"), 30, what="EXTRA downloaded")
    wait_agent(c, initializing=False, ready_models=3, total_models=3)
    assert EXTRA in v1_models(c)
    wait_until(lambda: loaded(sim).get(EXTRA, {}).get("expires_at", "") > "2300", what="held")

    r2 = ctl(c.url, "supported", "set", SMALL[0])
    assert r2.code == 0, r2.err
    assert supported(c) == [SMALL[0]]
    assert v1_models(c) == [SMALL[0]]
    wait_agent(c, total_models=1, ready_models=1)
    # Off the list: no longer held resident, still installed.
    for gone in (SMALL[1], EXTRA):
        wait_until(
            lambda m=gone: loaded(sim).get(m, {}).get("expires_at", "9999") < "2300",  # type: ignore[misc]
            what=f"{gone} released",
        )
    installed = {m["name"] for m in sim_state(sim)["installed"]}
    assert {SMALL[1], EXTRA} <= installed

    c.stop()
    c = restart_coordinator(fleet, c, supported_models=SMALL, registry_url=HERMETIC)
    assert supported(c) == [SMALL[0]]  # the database's list, not the config's seed
    assert agent_id in {a["id"] for a in [wait_agent(c, status="online")]}


def test_put_invalid_model_is_400_and_changes_nothing(fleet: Fleet) -> None:
    c = fleet.coordinator(supported_models=SMALL)
    with admin(c.url) as cl:
        r = cl.put("/api/supported-models", json={"models": [SMALL[0], "Bad Name!"]})
        assert r.status_code == 400, r.text
        assert "models[1]" in r.json()["error"]["message"]
        assert "Bad Name!" in r.json()["error"]["message"]
        r = cl.put("/api/supported-models", json={"models": "llama3.2:1b"})
        assert r.status_code == 400, r.text
        r = cl.put("/api/supported-models", json={})
        assert r.status_code == 400, r.text
    assert supported(c) == SMALL
    r2 = ctl(c.url, "supported", "--json")
    assert r2.code == 0 and r2.json()["models"] == SMALL


def test_a_draining_agent_gets_no_automatic_download_until_undrained(fleet: Fleet) -> None:
    _, c, _, agent_id = ready_fleet(fleet)
    with admin(c.url) as cl:
        assert cl.post(f"/api/agents/{agent_id}/drain").json()["draining"] is True
        r = cl.put("/api/supported-models", json={"models": [*SMALL, EXTRA]})
        assert r.status_code == 200, r.text
        # The agent hears of the new list (its heartbeat counts 3 models) but gets no task.
        wait_agent(c, total_models=3)
        assert tasks(c, model=EXTRA) == []
        assert cl.post(f"/api/agents/{agent_id}/undrain").json()["draining"] is False
    wait_until(lambda: tasks(c, model=EXTRA, status="completed"), 30, what="EXTRA after undrain")
