"""Manual distribution (FR-002, FR-003, E2, FR-008) and its bad input."""

from __future__ import annotations

from typing import Any

from tests.conftest import Fleet
from tests.distribution.conftest import (
    SMALL,
    distribute,
    pulls,
    ready_fleet,
    tasks,
    wait_agent,
    wait_task,
)
from tests.procs import admin, wait_until

EXTRA = "nomic-embed-text:latest"


def test_distribute_to_one_agent_then_to_all(fleet: Fleet) -> None:
    sims = [fleet.sim("--max-loaded-models", "8", wait=False) for _ in range(2)]
    c = fleet.coordinator(supported_models=SMALL)
    for i, s in enumerate(sims):
        s.wait_url()
        fleet.agent(c.url, ollama=s.url, registry_url=s.url, name=f"gpu-{i}")

    def ready() -> dict[str, str] | None:
        agents = _agents(c)
        if len(agents) == 2 and not any(a["initializing"] for a in agents):
            return {a["name"]: a["id"] for a in agents}
        return None

    names = wait_until(ready, 20, what="two ready agents")
    ids = [names["gpu-0"], names["gpu-1"]]
    first, first_sim, other_sim = ids[0], sims[0], sims[1]

    r = distribute(c, EXTRA, [first])
    assert r.status_code == 200, r.text
    [t] = r.json()["tasks"]
    assert (t["agent_id"], t["model"], t["status"]) == (first, EXTRA, "queued")
    wait_task(c, t["id"], "completed")
    assert pulls(first_sim, EXTRA) == 1
    assert pulls(other_sim, EXTRA) == 0
    with admin(c.url) as cl:
        rows = {a["id"]: a["models"] for a in cl.get("/api/models/matrix").json()["agents"]}
    assert rows[first][EXTRA] == "installed"
    assert rows[ids[1]][EXTRA] == "missing"

    r = distribute(c, "qwen2.5:0.5b", "all", if_installed="redownload")
    assert r.status_code == 200, r.text
    started = r.json()["tasks"]
    assert sorted(t["agent_id"] for t in started) == sorted(ids)
    for t in started:
        wait_task(c, t["id"], "completed")
    assert pulls(first_sim, "qwen2.5:0.5b") == pulls(other_sim, "qwen2.5:0.5b") == 2


def _agents(c: Any) -> list[dict[str, Any]]:
    with admin(c.url) as cl:
        result: list[dict[str, Any]] = cl.get("/api/agents").json()["agents"]
        return result


def test_already_installed_warns_skips_or_downloads_again(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet)
    before = len(tasks(c))

    r = distribute(c, "llama3.2:1b", [agent_id])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tasks"] == [] and body["errors"] == []
    assert [(w["agent_id"], w["code"]) for w in body["warnings"]] == [
        (agent_id, "already_installed")
    ]

    r = distribute(c, "llama3.2:1b", [agent_id], if_installed="skip")
    assert r.status_code == 200, r.text
    assert r.json() == {"tasks": [], "warnings": [], "errors": []}
    assert len(tasks(c)) == before

    r = distribute(c, "llama3.2:1b", [agent_id], if_installed="redownload")
    [t] = r.json()["tasks"]
    assert t["redownload"] is True
    wait_task(c, t["id"], "completed")
    assert pulls(sim, "llama3.2:1b") == 2  # really fetched again
    wait_agent(c, initializing=False, ready_models=2)


def test_offline_agent_is_an_error_unless_asked_to_wait(fleet: Fleet) -> None:
    sim, c, a, agent_id = ready_fleet(fleet, coordinator={"heartbeat_timeout_s": 1.5})
    assert a.stop() == 0
    wait_agent(c, status="offline")

    r = distribute(c, EXTRA, [agent_id])
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["tasks"] == []
    assert [(e["agent_id"], e["code"]) for e in body["errors"]] == [(agent_id, "agent_offline")]
    assert "offline" in body["errors"][0]["message"]
    assert tasks(c, model=EXTRA) == []

    r = distribute(c, EXTRA, [agent_id], if_offline="retry-when-online")
    assert r.status_code == 200, r.text
    [t] = r.json()["tasks"]
    assert t["status"] == "waiting"
    assert pulls(sim, EXTRA) == 0

    fleet.agent(c.url, ollama=sim.url, registry_url=sim.url, data_dir=a.data_dir)  # type: ignore[attr-defined]
    wait_task(c, t["id"], "completed")
    assert pulls(sim, EXTRA) == 1


BAD = [
    ({"model": "", "agents": "all"}, 400, "invalid model name"),
    ({"model": "bad name!", "agents": "all"}, 400, "invalid model name"),
    ({"model": "a:b:c", "agents": "all"}, 400, "invalid model name"),
    ({"agents": "all"}, 400, "model"),
    ({"model": 7, "agents": "all"}, 400, "model"),
    ({"model": EXTRA, "agents": "all", "if_installed": "maybe"}, 400, "if_installed"),
    ({"model": EXTRA, "agents": "all", "if_offline": "later"}, 400, "if_offline"),
    ({"model": EXTRA, "agents": []}, 400, "agents"),
    ({"model": EXTRA, "agents": "some"}, 400, "agents"),
    ({"model": EXTRA, "agents": [3]}, 400, "agents"),
    ({"model": EXTRA, "agents": ["nosuchagent"]}, 404, "nosuchagent"),
    ({"model": EXTRA}, 400, "agents"),
]


def test_bad_distribution_is_4xx_naming_the_fault_and_creates_nothing(fleet: Fleet) -> None:
    _, c, _, agent_id = ready_fleet(fleet)
    before = tasks(c)
    with admin(c.url) as cl:
        for body, status, words in [
            *BAD,
            ({"model": EXTRA, "agents": [agent_id, "ghost"]}, 404, "ghost"),
        ]:
            r = cl.post("/api/distributions", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
    assert tasks(c) == before


def test_distribution_to_zero_agents_and_other_bad_requests(fleet: Fleet) -> None:
    c = fleet.coordinator(supported_models=SMALL)
    with admin(c.url) as cl:
        r = cl.post("/api/distributions", json={"model": EXTRA, "agents": "all"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_agents", r.text
        r = cl.post("/api/distributions", content=b"{not json")
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
        assert cl.get("/api/tasks", params={"status": "nonsense"}).status_code == 400
        assert cl.get("/api/tasks", params={"model": "bad name!"}).status_code == 400
        assert cl.get("/api/tasks/nosuchtask").status_code == 404
        assert cl.post("/api/tasks/nosuchtask/retry").status_code == 404
        assert cl.post("/api/tasks/nosuchtask/cancel").status_code == 404
        assert cl.get("/api/agents/nosuchagent/models").status_code == 404
        assert cl.get("/api/tasks").json() == {"tasks": []}
        r = cl.post(
            "/api/distributions",
            json={"model": EXTRA, "agents": "all"},
            headers={"Authorization": "Bearer wrong"},
        )
        assert r.status_code == 401
