"""The agent's queue (E5, S8) and live progress (FR-004, S3)."""

from __future__ import annotations

import itertools
import time
from typing import Any

from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SLOW,
    agent_queue,
    distribute,
    ready_fleet,
    sim_state,
    tasks,
    wait_task,
)
from tests.procs import admin, wait_until

EXTRA = "nomic-embed-text:latest"


def test_ten_queued_run_at_most_max_concurrent_in_order(fleet: Fleet) -> None:
    models = [f"tiny{i}:1b" for i in range(10)]
    extra = [arg for m in models for arg in ("--model", f"{m}=80MB")]
    sim, c, a, agent_id = ready_fleet(
        fleet,
        *PREINSTALLED,
        *extra,
        "--size-scale",
        "0.01",
        "--bandwidth",
        "1MB",
        max_concurrent_downloads=2,
    )
    ids = []
    with admin(c.url) as cl:
        for m in models:
            r = cl.post("/api/distributions", json={"model": m, "agents": [agent_id]})
            ids.append(r.json()["tasks"][0]["id"])
    most_agent = most_sim = most_queued = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [e for e in agent_queue(a)["tasks"] if e["status"] == "downloading"]
        most_agent = max(most_agent, len(running))
        most_sim = max(most_sim, len(sim_state(sim)["active_pulls"]))
        states = [t["status"] for t in tasks(c, agent=agent_id)]
        most_queued = max(most_queued, states.count("queued"))
        if states.count("completed") == 10:
            break
        time.sleep(0.02)
    assert most_agent == 2 and most_sim <= 2, (most_agent, most_sim)
    assert most_queued >= 7
    done = [wait_task(c, i, "completed") for i in ids]
    started = sorted(done, key=lambda t: t["started_at"])
    assert [t["model"] for t in started] == models  # first come, first served


def test_progress_reaches_events_at_least_once_a_second(fleet: Fleet, events: Any) -> None:
    _, c, _, agent_id = ready_fleet(fleet, *SLOW)
    ev = events(c.url)
    assert ev.subscribed.wait(5), "no retry line from /api/events"
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    wait_task(c, t["id"], "completed")
    seen = wait_until(
        lambda: (s := ev.tasks(t["id"])) and s[-1][1]["status"] == "completed" and s,
        5,
        what="the completed task on /api/events",
    )
    statuses = [obj["status"] for _, obj in seen]
    assert statuses[-1] == "completed"
    running = [(at, obj) for at, obj in seen if obj["status"] == "downloading"]
    assert len(running) >= 4
    # Every message is the whole task, as the REST API shows it.
    assert set(running[0][1]) >= {"id", "agent_id", "model", "progress", "speed_bps", "eta_s"}
    times = [at for at, _ in running] + [seen[-1][0]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 1.0, gaps
    progress = [obj["progress"] for _, obj in running]
    assert progress == sorted(progress) and 0 < progress[-1] < 1
    assert any(obj["speed_bps"] > 0 and obj["eta_s"] is not None for _, obj in running)
    # Speed is about the simulated 1 MB/s, and the ETA matches what is left.
    _, last = running[-1]
    assert 0.5e6 < last["speed_bps"] < 2e6, last
    left = (last["total_bytes"] - last["completed_bytes"]) / last["speed_bps"]
    assert abs(last["eta_s"] - left) < 0.5
