"""``POST /api/pull`` on the coordinator: a distribution to every online agent, followed in
Ollama's pull format, with the ``ollama`` library unchanged."""

from __future__ import annotations

import httpx
import ollama

from tests.conftest import Fleet
from tests.inference.conftest import MESSAGES, sim_post, sim_state, start
from tests.procs import ADMIN_TOKEN, admin

NEW = "gpt-oss:20b"
"""Not preinstalled: ~1.4 MB at the tests' size scale, about 1.5 s at 1 MB/s."""


def admin_client(url: str) -> ollama.Client:
    return ollama.Client(host=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


def test_pull_reaches_every_agent_with_progress(fleet: Fleet) -> None:
    setup = start(fleet, 2, sim_args=("--bandwidth", "1MB"))
    url = setup.coordinator.url
    with admin_client(url) as client:
        lines = list(client.pull(NEW, stream=True))
    assert lines[0].status == "pulling manifest"
    assert lines[-1].status == "success"
    progress = [p for p in lines if p.total]
    assert len(progress) >= 3, lines
    size = sim_state(setup.sims[0])["installed"]
    completed = [p.completed or 0 for p in progress]
    assert completed == sorted(completed) and completed[0] < completed[-1] == progress[-1].total
    for sim in setup.sims:
        assert NEW in {m["name"] for m in sim_state(sim)["installed"]}
    assert progress[-1].total == 2 * next(m["size"] for m in size if m["name"] == NEW)
    with admin(url) as c:
        tasks = c.get("/api/tasks", params={"model": NEW}).json()["tasks"]
    assert sorted(t["status"] for t in tasks) == ["completed", "completed"]
    # Pulled models are served through the fleet.
    with ollama.Client(host=url, timeout=30) as client:
        assert client.chat(model=NEW, messages=MESSAGES).message.content
    # A second pull finds it everywhere: success at once, nothing downloaded again.
    with admin_client(url) as client:
        assert client.pull(NEW).status == "success"
    assert all(sim_state(s)["pulls"][NEW] == 1 for s in setup.sims)


def test_a_failed_pull_names_the_agent(fleet: Fleet) -> None:
    setup = start(fleet, 2)
    fault = {"model": NEW, "kind": "fail", "at": 0.3, "message": "no space left on device"}
    sim_post(setup.sims[1], "/_sim/faults", fault)
    with httpx.stream(
        "POST",
        setup.coordinator.url + "/api/pull",
        json={"model": NEW},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    last = httpx.Response(200, content=lines[-1]).json()
    assert "gpu-1" in last["error"] and "no space left on device" in last["error"]
    assert "gpu-0" not in last["error"]
    # The fault hit once: pulling again orders the agent that failed, and only that one.
    with admin_client(setup.coordinator.url) as client:
        assert client.pull(NEW).status == "success"
    assert [sim_state(s)["pulls"][NEW] for s in setup.sims] == [1, 2]
