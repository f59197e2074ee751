"""Removing a retired agent and clearing finished tasks (issue 22 item 2), through the HTTP API
and ``fleetd ctl``."""

from __future__ import annotations

from tests.conftest import Fleet
from tests.ctl.conftest import ctl, two_agent_fleet
from tests.distribution.conftest import (
    SLOW,
    SMALL,
    agents,
    distribute,
    ready_fleet,
    restart_coordinator,
    tasks,
    wait_task,
)
from tests.procs import admin, wait_until

EXTRA = "nomic-embed-text:latest"


def test_remove_refused_while_online_then_gone_and_back_as_new(fleet: Fleet) -> None:
    c, _, ids = two_agent_fleet(fleet)
    gpu1 = ids["gpu-1"]
    out = ctl(c.url, "drain", "gpu-1")
    assert out.code == 0, out.err
    assert out.out.startswith(f"agent gpu-1 ({gpu1}) is draining")
    assert "online, draining" in ctl(c.url, "agents").out
    assert ctl(c.url, "undrain", gpu1[:6], "--json").json()["draining"] is False
    with admin(c.url) as cl:
        r = cl.delete(f"/api/agents/{gpu1}")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "agent_online"
        assert "force=true" in r.json()["error"]["message"]
    r2 = ctl(c.url, "remove", "gpu-1", "--force")
    assert r2.code == 0, r2.err
    assert r2.out.strip() == f"removed agent gpu-1 ({gpu1})"
    # Still running: it is told it is unknown at its next heartbeat and registers anew.
    again = wait_until(
        lambda: [a for a in agents(c) if a["name"] == "gpu-1" and a["id"] != gpu1],
        what="gpu-1 registered anew",
    )
    assert len(agents(c)) == 2
    assert again[0]["draining"] is False
    assert "Traceback" not in c.log


def test_remove_an_offline_agent_cancels_its_tasks(fleet: Fleet) -> None:
    _, c, a, agent_id = ready_fleet(fleet, *SLOW, coordinator={"heartbeat_timeout_s": 2})
    a.kill()
    with admin(c.url) as cl:
        wait_until(
            lambda: cl.get(f"/api/agents/{agent_id}").json()["status"] == "offline",
            what="the agent offline",
        )
        r = distribute(c, EXTRA, [agent_id], if_offline="retry-when-online")
        assert r.status_code == 200, r.text
        [waiting] = r.json()["tasks"]
        assert waiting["status"] == "waiting"
        assert cl.delete(f"/api/agents/{agent_id}").status_code == 200
        assert cl.get(f"/api/agents/{agent_id}").status_code == 404
        r = cl.delete(f"/api/agents/{agent_id}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_agent"
    assert wait_task(c, waiting["id"], "cancelled")["status"] == "cancelled"
    assert agents(c) == []
    c.stop()
    again = restart_coordinator(fleet, c, supported_models=SMALL, registry_url="http://127.0.0.1:9")
    assert agents(again) == []  # gone from the database too


def test_clear_finished_tasks_but_not_running_ones(fleet: Fleet) -> None:
    c, _, ids = two_agent_fleet(fleet, *SLOW)
    r = distribute(c, EXTRA, [ids["gpu-0"]])
    done = r.json()["tasks"][0]
    wait_task(c, done["id"], "completed", timeout=30)
    r = distribute(c, EXTRA, [ids["gpu-1"]])
    running = r.json()["tasks"][0]
    with admin(c.url) as cl:
        r = cl.delete(f"/api/tasks/{running['id']}")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "task_running"
        r = cl.delete("/api/tasks", params={"status": "downloading"})
        assert r.status_code == 409, r.text
        r = cl.delete("/api/tasks", params={"status": "nonsense"})
        assert r.status_code == 400, r.text
        assert cl.delete("/api/tasks/nosuchtask").status_code == 404
        r = cl.delete(f"/api/tasks/{done['id']}")
        assert r.status_code == 200 and r.json() == {"removed": [done["id"]]}
        assert cl.get(f"/api/tasks/{done['id']}").status_code == 404
    assert running["id"] in {t["id"] for t in tasks(c)}
    wait_task(c, running["id"], "completed", timeout=30)
    out = ctl(c.url, "tasks", "clear")
    assert out.code == 0, out.err
    assert out.out.strip() == "removed 1 tasks"
    assert tasks(c) == []
