"""Issue 18 item 7: a download that stops making progress (Ollama still sending the same
progress lines) is retried, and fails with a clear reason after its retries."""

from __future__ import annotations

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import distribute, pulls, ready_fleet, wait_task

EXTRA = "nomic-embed-text:latest"


def stall(sim_url: str, times: int) -> None:
    fault = {"model": EXTRA, "kind": "stall", "at": 0.5, "times": times}
    r = httpx.post(sim_url + "/_sim/faults", json=fault, timeout=5)
    assert r.status_code == 200, r.text


def test_a_stalled_download_is_retried_and_completes(fleet: Fleet) -> None:
    sim, c, a, agent_id = ready_fleet(fleet, download_stall_timeout_s=1)
    stall(sim.url, times=1)
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    done = wait_task(c, t["id"], "completed", timeout=30)
    assert done["error"] is None and done["progress"] == 1.0
    assert pulls(sim, EXTRA) == 2
    assert "stalled: no progress for 1 s" in a.log


def test_a_download_that_keeps_stalling_fails_naming_the_stall(fleet: Fleet) -> None:
    sim, c, a, agent_id = ready_fleet(fleet, download_stall_timeout_s=1)
    stall(sim.url, times=-1)
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    failed = wait_task(c, t["id"], "failed", timeout=60)
    assert failed["error"] == "stalled: no progress for 1 s (less than 1 MiB), 4 tries"
    assert failed["completed_bytes"] > 0  # the partial stays for a later retry
    assert pulls(sim, EXTRA) == 4
    assert "Traceback" not in a.log and "Traceback" not in sim.log
