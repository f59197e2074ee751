"""Issue 18 item 6: agent names and URLs are checked; impossible progress reports are 400."""

from __future__ import annotations

import httpx

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, wait_until

AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_agent_names_and_urls_are_checked(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    ok_url = "http://127.0.0.1:9"
    with httpx.Client(base_url=coord.url, timeout=10) as c:
        for name in ("gpu\n2026-12-04 INFO fleetd: forged", "a\rb", "tab\there", "\x00", " "):
            r = c.post(
                "/api/agents", headers=AGENT, json={"name": name, "url": ok_url, "gpus": [SIM_GPU]}
            )
            assert r.status_code == 400, name
            assert r.json()["error"]["message"].startswith("name:"), r.text
        for url in (
            "ftp://h:1",
            "http://",
            "http://:8080",
            "http://h:0",
            "http://h:65536",
            "http://h:99999999",
            "http://h:abc",
            "http://h\n:1",
            "http://h x:1",
            "h:11435",
        ):
            r = c.post(
                "/api/agents", headers=AGENT, json={"name": "n", "url": url, "gpus": [SIM_GPU]}
            )
            assert r.status_code == 400, url
            assert r.json()["error"]["message"].startswith("url:"), r.text
        assert c.get("/api/agents", headers=ADMIN).json()["agents"] == []
        for url in ("http://gpu-07:11435", "https://[::1]:1/prefix", "http://10.0.0.5:65535"):
            r = c.post(
                "/api/agents",
                headers=AGENT,
                json={"name": "gpu-07 (rack 2)", "url": url, "gpus": [SIM_GPU]},
            )
            assert r.status_code == 200, (url, r.text)
    assert "forged" not in coord.log


def test_impossible_progress_is_400_and_leaves_waiting_tasks_alone(fleet: Fleet) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=1, supported_models=["qwen2.5:0.5b"])
    with httpx.Client(base_url=coord.url, timeout=10) as c:
        body = {"name": "gone", "url": "http://127.0.0.1:9", "gpus": [SIM_GPU]}
        agent_id = c.post("/api/agents", headers=AGENT, json=body).json()["id"]

        def waiting() -> dict | None:
            (t,) = c.get("/api/tasks", headers=ADMIN).json()["tasks"] or [None]
            return t if t and t["status"] == "waiting" else None

        task = wait_until(waiting, timeout=15, what="the agent offline, its task waiting")
        for update in (
            {"completed_bytes": 10, "total_bytes": 5},
            {"completed_bytes": -1, "total_bytes": 5},
            {"completed_bytes": 1, "total_bytes": -5},
            {"completed_bytes": 2**63, "total_bytes": 2**64},
        ):
            report = {"tasks": [{"task_id": task["id"], "status": "downloading", **update}]}
            r = c.post(f"/api/agents/{agent_id}/progress", headers=AGENT, json=report)
            assert r.status_code == 400, (update, r.text)
            assert "bytes" in r.json()["error"]["message"]
        after = c.get(f"/api/tasks/{task['id']}", headers=ADMIN).json()
        assert after["status"] == "waiting" and after["completed_bytes"] == task["completed_bytes"]
    assert "Traceback" not in coord.log
