"""Two coordinators sharing one PostgreSQL (issue 21): one fleet whichever is asked, duties
taken over when one is killed, agents moving to the survivor with their downloads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SMALL,
    Events,
    agents,
    distribute,
    restart_coordinator,
    tasks,
    wait_agent,
    wait_task,
)
from tests.ha.conftest import TIMEOUT_S, agent_on, pair
from tests.procs import AGENT_TOKEN, SIM_GPU, Proc, wait_until

EXTRA = "nomic-embed-text:latest"


def test_an_agent_registered_through_one_is_listed_by_both_and_kept_online(
    fleet: Fleet, pg_url: str
) -> None:
    sim = fleet.sim(*PREINSTALLED)
    a, b = pair(fleet, pg_url)
    fleet.agent(b.url, ollama=sim.url, registry_url=sim.url)  # heartbeats to B only
    agent_id = wait_agent(b, initializing=False)["id"]
    wait_until(lambda: (x := agent_on(a, agent_id)) and not x["initializing"], what="agent on A")
    assert [x["id"] for x in agents(a)] == [agent_id]

    # A runs the offline sweep and never hears from the agent itself: B's word keeps it
    # online, for several timeouts.
    end = time.monotonic() + 3 * TIMEOUT_S
    while time.monotonic() < end:
        seen = agent_on(a, agent_id)
        assert seen is not None and seen["status"] == "online", seen
        time.sleep(0.2)
    assert "silent for more than" not in a.log


def test_a_task_ordered_on_one_streams_on_the_others_events(fleet: Fleet, pg_url: str) -> None:
    sim = fleet.sim(*PREINSTALLED, "--size-scale", "0.01", "--bandwidth", "1MB")
    a, b = pair(fleet, pg_url)
    fleet.agent(a.url, ollama=sim.url, registry_url=sim.url)
    agent_id = wait_agent(a, initializing=False)["id"]
    wait_until(lambda: agent_on(b, agent_id), what="agent on B")
    on_b = Events(b.url)
    try:
        [t] = distribute(a, EXTRA, [agent_id]).json()["tasks"]
        wait_task(a, t["id"], "completed", timeout=60)
        wait_until(
            lambda: any(o["status"] == "completed" for _, o in on_b.tasks(t["id"])),
            what="the completion on B's /api/events",
        )
        seen = [o for _, o in on_b.tasks(t["id"])]
        assert any(o["status"] == "downloading" and 0 < o["progress"] < 1 for o in seen), seen
        revisions = [o["revision"] for o in seen]
        assert revisions == sorted(revisions)
    finally:
        on_b.close()
    assert [x["status"] for x in tasks(b) if x["id"] == t["id"]] == ["completed"]


def test_kill_9_of_one_coordinator_loses_nothing(fleet: Fleet, pg_url: str) -> None:
    sim = fleet.sim(*PREINSTALLED, "--size-scale", "0.02", "--bandwidth", "1MB")
    a, b = pair(fleet, pg_url)
    # One agent knows both (A first); another knows only A and will fall silent with it.
    mover = fleet.agent(f"{a.url},{b.url}", ollama=sim.url, registry_url=sim.url)
    lone = fleet.agent(a.url, ollama=sim.url, registry_url=sim.url)
    mover.wait_for_line("registered with " + a.url)
    lone.wait_for_line("registered with " + a.url)
    mover_id = next(x["id"] for x in agents(a) if x["url"] == mover.url)
    lone_id = next(x["id"] for x in agents(a) if x["url"] == lone.url)
    wait_until(lambda: (x := agent_on(b, mover_id)) and not x["initializing"], 30, what="ready")

    [t] = distribute(a, EXTRA, [mover_id]).json()["tasks"]
    wait_until(
        lambda: any(x["id"] == t["id"] and x["progress"] > 0 for x in tasks(b)),
        30,
        what="progress seen from B",
    )
    a.kill()

    # The agent moves to B and its download completes, seen from B.
    mover.wait_for_line(f"moving to {b.url}")
    wait_task(b, t["id"], "completed", timeout=60)
    # B took over the sweep: the agent that knew only A goes offline there.
    b.wait_for_line("now runs the offline sweep")
    wait_until(lambda: agent_on(b, lone_id)["status"] == "offline", 20, what="lone offline on B")
    assert agent_on(b, mover_id)["status"] == "online"
    # Inference through the survivor.
    chat = {"model": SMALL[0], "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(b.url + "/v1/chat/completions", json=chat, timeout=30)
    assert r.status_code == 200, r.text

    # A task created while A is down is there when A returns.
    [t2] = distribute(b, EXTRA, [mover_id], if_installed="redownload").json()["tasks"]
    a2 = restart_coordinator(
        fleet,
        a,
        supported_models=SMALL,
        database_url=pg_url,
        heartbeat_timeout_s=TIMEOUT_S,
    )
    assert t2["id"] in {x["id"] for x in tasks(a2)}
    wait_task(a2, t2["id"], "completed", timeout=60)
    assert {x["id"] for x in agents(a2)} == {mover_id, lone_id}


def test_agents_registering_through_both_at_once_get_one_id_each(fleet: Fleet, pg_url: str) -> None:
    a, b = pair(fleet, pg_url)
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    n = 10
    go = threading.Barrier(2 * n)

    def register(job: tuple[Proc, int]) -> httpx.Response:
        c, i = job
        body = {"name": f"gpu-{i}", "url": f"http://127.0.0.1:{9000 + i}", "gpus": [SIM_GPU]}
        body["instance_id"] = f"i-{i}"
        with httpx.Client(headers=headers, timeout=30) as client:
            go.wait()
            return client.post(c.url + "/api/agents", json=body)

    with ThreadPoolExecutor(2 * n) as pool:
        replies = list(pool.map(register, [(c, i) for i in range(n) for c in (a, b)]))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    ids = {r.json()["name"]: r.json()["id"] for r in replies}
    assert len({r.json()["id"] for r in replies}) == n  # twice the same id per agent
    for c in (a, b):
        wait_until(
            lambda c=c: {x["name"]: x["id"] for x in agents(c)} == ids, what="one id per agent"
        )
