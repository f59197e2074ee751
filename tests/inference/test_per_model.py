"""Routing per model: an agent that has been ready once keeps serving the models it has while
it fetches another; only the model it is (re-)downloading is unavailable there."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, CHAT2, MESSAGES, agents, requests_served, sim_post, start
from tests.procs import admin, wait_until


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def redownload(coord: str, targets: Any) -> dict[str, Any]:
    with admin(coord) as c:
        r = c.post(
            "/api/distributions",
            json={"model": CHAT, "agents": targets, "if_installed": "redownload"},
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_redownload_takes_only_that_model_out_of_service(fleet: Fleet) -> None:
    setup = start(fleet, 2, queue_timeout_s=3)
    coord, sims = setup.coordinator, setup.sims
    for sim in sims:
        sim_post(sim, "/_sim/settings", {"bandwidth_bps": "1"})  # re-downloads stall
    ids = {a["name"]: a["id"] for a in agents(coord)}

    first = redownload(coord.url, [ids["gpu-0"]])
    assert not [w for w in first["warnings"] if w["code"] == "no_agent_left"], first
    before = requests_served(sims[0])
    for _ in range(4):
        r = chat(coord.url, CHAT)
        assert r.status_code == 200, r.text
    assert requests_served(sims[0]) == before  # gpu-1 took them all

    rest = redownload(coord.url, "all")  # gpu-0's is under way already: only gpu-1 is new
    left = [w for w in rest["warnings"] if w["code"] == "no_agent_left"]
    assert len(left) == 1 and CHAT in left[0]["message"], rest

    wait_until(
        lambda: all(a["ready_models"] == 1 for a in agents(coord)),
        what="both agents without the model being fetched",
    )
    assert not [a for a in agents(coord) if a["initializing"] or a["status"] != "online"]
    for _ in range(4):  # the other supported model is still served by both
        r = chat(coord.url, CHAT2)
        assert r.status_code == 200, r.text
    assert all(requests_served(s, CHAT2) > 0 for s in sims)
    waited = chat(coord.url, CHAT)  # nobody can serve it until a re-download completes
    assert waited.status_code == 503 and waited.json()["error"]["code"] == "models_starting"

    for sim in sims:
        sim_post(sim, "/_sim/settings", {"bandwidth_bps": "2000MB"})
    wait_until(lambda: chat(coord.url, CHAT).status_code == 200, what=f"{CHAT} served again")
    assert "Traceback" not in coord.log
