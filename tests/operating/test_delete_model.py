"""Removing a model from the fleet (issue 22 item 6): Ollama's ``DELETE /api/delete`` through
the coordinator, a delete task per agent that has it, 409 while the fleet must hold it."""

from __future__ import annotations

import httpx

from tests.conftest import Fleet
from tests.ctl.conftest import two_agent_fleet
from tests.distribution.conftest import SLOW, SMALL, distribute, sim_state, wait_task
from tests.procs import admin

EXTRA = "nomic-embed-text:latest"


def delete(url: str, body: dict[str, str], token: bool = True) -> httpx.Response:
    with admin(url) as cl:
        if not token:
            del cl.headers["Authorization"]
        return cl.request("DELETE", "/api/delete", json=body)


def test_delete_removes_a_model_from_every_agent_that_has_it(fleet: Fleet) -> None:
    c, sims, ids = two_agent_fleet(fleet, *SLOW)
    r = distribute(c, EXTRA, "all")
    for t in r.json()["tasks"]:
        wait_task(c, t["id"], "completed", timeout=30)
    assert all(EXTRA in {m["name"] for m in sim_state(s)["installed"]} for s in sims)

    r = delete(c.url, {"name": "nomic-embed-text"})  # Ollama's older spelling, short name
    assert r.status_code == 200, r.text
    deletes = r.json()["tasks"]
    assert sorted(t["agent_id"] for t in deletes) == sorted(ids.values())
    assert {(t["kind"], t["model"]) for t in deletes} == {("delete", EXTRA)}
    for t in deletes:
        wait_task(c, t["id"], "completed")
    for s in sims:
        assert EXTRA not in {m["name"] for m in sim_state(s)["installed"]}
    with admin(c.url) as cl:
        for agent_id in ids.values():
            listed = cl.get(f"/api/agents/{agent_id}/models").json()["models"]
            assert EXTRA not in {m["name"] for m in listed}
        matrix = cl.get("/api/models/matrix").json()
    assert all(row["models"].get(EXTRA, "missing") == "missing" for row in matrix["agents"])
    r = delete(c.url, {"model": EXTRA})
    assert r.status_code == 404, r.text  # nobody has it any more
    assert "Traceback" not in c.log


def test_delete_refuses_supported_unknown_invalid_and_anonymous(fleet: Fleet) -> None:
    c, _, _ = two_agent_fleet(fleet)
    r = delete(c.url, {"model": SMALL[0]})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "model_supported"  # Ollama's error shape, plus a code
    assert "supported" in r.json()["error"]
    r = delete(c.url, {"model": "nosuchmodel:1b"})
    assert r.status_code == 404, r.text
    r = delete(c.url, {"model": "Bad Name!"})
    assert r.status_code == 400, r.text
    r = delete(c.url, {"model": EXTRA}, token=False)
    assert r.status_code == 401, r.text
    assert "Traceback" not in c.log
