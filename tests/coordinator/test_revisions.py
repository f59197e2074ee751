"""Every agent and task copy carries a ``revision`` that grows with each change, the same in
REST replies and SSE messages, and that keeps growing across a coordinator restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU

AGENT_AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}
SUPPORTED = "qwen2.5:0.5b"
HEARTBEAT = {"initializing": False, "ready_models": 0, "total_models": 0}


def next_event(lines: Iterator[str], kind: str, object_id: str) -> dict[str, Any]:
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == kind:
            obj: dict[str, Any] = json.loads(line.removeprefix("data: "))
            if obj["id"] == object_id:
                return obj
    raise AssertionError(f"the event stream ended before a {kind} message for {object_id}")


def test_revisions_grow_with_every_change_in_replies_and_events(fleet: Fleet) -> None:
    coord = fleet.coordinator(supported_models=[SUPPORTED])
    body = {"name": "gpu-rev", "url": "http://127.0.0.1:9", "gpus": [SIM_GPU]}
    admin_auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with (
        httpx.Client(base_url=coord.url, headers=AGENT_AUTH, timeout=10) as agent,
        httpx.Client(base_url=coord.url, headers=admin_auth, timeout=10) as admin,
    ):
        registered = agent.post("/api/agents", json=body).json()
        agent_id = registered["id"]
        with admin.stream("GET", "/api/events") as events:
            lines = events.iter_lines()
            beat = agent.post(f"/api/agents/{agent_id}/heartbeat", json=HEARTBEAT).json()
            assert beat["revision"] > registered["revision"] > 0
            assert next_event(lines, "agent", agent_id)["revision"] == beat["revision"]
            assert admin.get(f"/api/agents/{agent_id}").json()["revision"] == beat["revision"]

            req = {"model": "llama3.2:1b", "agents": [agent_id]}
            created = admin.post("/api/distributions", json=req).json()["tasks"][0]
            cancelled = admin.post(f"/api/tasks/{created['id']}/cancel").json()
            assert cancelled["status"] == "cancelled"
            assert cancelled["revision"] > created["revision"]
            assert admin.get(f"/api/tasks/{created['id']}").json() == cancelled
            seen = next_event(lines, "task", created["id"])
            while seen["status"] != "cancelled":
                assert seen["revision"] < cancelled["revision"]
                seen = next_event(lines, "task", created["id"])
            assert seen["revision"] == cancelled["revision"]

    assert coord.stop() == 0
    data_dir = coord.data_dir  # type: ignore[attr-defined]
    again = fleet.coordinator(data_dir=data_dir, supported_models=[SUPPORTED])
    with httpx.Client(base_url=again.url, headers=AGENT_AUTH, timeout=10) as agent:
        after = agent.post(f"/api/agents/{agent_id}/heartbeat", json=HEARTBEAT).json()
    assert after["revision"] > beat["revision"]
