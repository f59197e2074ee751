"""Failed downloads (FR-007, FR-010, E3): disk check, unknown models, Ollama's errors,
transient cuts retried with resume, malformed streams, cancel and retry."""

from __future__ import annotations

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SLOW,
    SMALL,
    distribute,
    pulls,
    ready_fleet,
    sim_state,
    task,
    tasks,
    wait_agent,
    wait_task,
)
from tests.procs import admin, wait_until

EXTRA = "nomic-embed-text:latest"


def test_too_little_disk_fails_at_once_naming_needed_and_free_bytes(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet, *PREINSTALLED, disk_margin_bytes=10**18)
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    done = wait_task(c, t["id"], "failed", timeout=5)
    assert "not enough disk space" in done["error"]
    assert "needs" in done["error"] and "free" in done["error"]
    assert str(done["total_bytes"]) in done["error"]  # the exact size from the manifest
    assert pulls(sim, EXTRA) == 0  # checked before pulling


def test_unknown_model_fails_with_a_clear_message_and_no_pull(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet)
    [t] = distribute(c, "nosuchmodel:7b", [agent_id]).json()["tasks"]
    done = wait_task(c, t["id"], "failed", timeout=5)
    assert "nosuchmodel:7b not found in the registry" in done["error"]
    assert pulls(sim, "nosuchmodel:7b") == 0


def test_ollama_error_line_after_http_200_fails_with_its_message_then_retry_works(
    fleet: Fleet,
) -> None:
    sim, c, _, agent_id = ready_fleet(fleet)
    message = "write /usr/share/ollama/.ollama/models/blobs/x-partial: no space left on device"
    r = httpx.post(
        sim.url + "/_sim/faults",
        json={"model": EXTRA, "kind": "fail", "at": 0.3, "message": message},
    )
    assert r.status_code == 200, r.text
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    failed = wait_task(c, t["id"], "failed")
    assert failed["error"] == message
    assert pulls(sim, EXTRA) == 1  # Ollama's verdict is not retried blindly

    with admin(c.url) as cl:
        r = cl.post(f"/api/tasks/{t['id']}/retry")
        assert r.status_code == 200, r.text
        assert r.json()["attempt"] == 1 and r.json()["error"] is None
        done = wait_task(c, t["id"], "completed")
        assert done["progress"] == 1.0 and done["error"] is None
        assert cl.post(f"/api/tasks/{t['id']}/retry").status_code == 409


def test_cut_stream_is_retried_and_resumes_from_the_partial(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet)
    r = httpx.post(sim.url + "/_sim/faults", json={"model": EXTRA, "kind": "interrupt", "at": 0.5})
    assert r.status_code == 200, r.text
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    done = wait_task(c, t["id"], "completed")
    state = sim_state(sim)
    assert state["pulls"][EXTRA] == 2
    # The second pull went on from the partial instead of starting over.
    assert state["bytes_downloaded"][EXTRA] < 1.2 * done["total_bytes"]


def test_malformed_pull_stream_fails_the_task_and_the_agent_lives_on(
    fleet: Fleet, garbage_ollama: str
) -> None:
    c = fleet.coordinator(supported_models=SMALL)
    a = fleet.agent(c.url, ollama=garbage_ollama, registry_url=garbage_ollama)

    def failed() -> list[dict[str, object]] | None:
        ts = tasks(c, status="failed")
        return ts if len(ts) == 2 else None

    for t in wait_until(failed, 15, what="both supported models failed"):
        assert "malformed pull stream" in str(t["error"]), t
    assert httpx.get(a.url + "/healthz").status_code == 200
    assert wait_agent(c, status="online")["initializing"] is True


def test_cancel_a_running_download(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet, *SLOW)
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    wait_until(lambda: task(c, t["id"])["completed_bytes"] > 0, 10, what="bytes flowing")
    with admin(c.url) as cl:
        r = cl.post(f"/api/tasks/{t['id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled"
        wait_until(lambda: not sim_state(sim)["active_pulls"], 5, what="the pull stopped")
        assert cl.post(f"/api/tasks/{t['id']}/cancel").status_code == 409
    assert task(c, t["id"])["status"] == "cancelled"
    assert EXTRA not in {m["name"] for m in sim_state(sim)["installed"]}
