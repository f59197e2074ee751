"""Agents pull through the coordinator's mirror: one upstream download for the whole fleet,
canonical names only on each Ollama, and the registry directly when the mirror is off or
keeps failing (the task's ``source`` says which)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Fleet
from tests.distribution.conftest import agents, tasks
from tests.mirror.conftest import (
    MODEL,
    SCALE,
    manifest,
    mirror_coordinator,
    mirror_state,
    model_bytes,
    registry_knobs,
    tags,
    upstream,
    upstream_served,
)
from tests.procs import Proc, admin, wait_until


def _fleet(fleet: Fleet, c: Proc, registry_url: str, n: int) -> list[Proc]:
    sims = [fleet.sim("--size-scale", SCALE, "--max-loaded-models", "8") for _ in range(n)]
    for sim in sims:
        fleet.agent(c.url, ollama=sim.url, registry_url=registry_url, wait=False)
    return sims


def _all_ready(c: Proc, n: int) -> list[dict[str, Any]] | None:
    found = agents(c)
    ready = [a for a in found if a["ready_models"] == 1 and not a["initializing"]]
    return found if len(ready) == n else None


def test_three_agents_cost_one_upstream_download(fleet: Fleet) -> None:
    up = upstream(fleet)
    # Slow upstream: the agents ask while the blobs are still arriving.
    registry_knobs(up, bandwidth_bps=1_000_000)
    c = mirror_coordinator(fleet, up.url, supported_models=[MODEL])
    sims = _fleet(fleet, c, up.url, 3)
    wait_until(lambda: _all_ready(c, 3), 60, 0.2, what="3 agents with the model")
    size = model_bytes(manifest(up))
    assert upstream_served(up) <= 1.05 * size
    assert mirror_state(c)["upstream_bytes"] <= 1.05 * size
    for sim in sims:
        assert tags(sim) == [MODEL]  # the mirror-named copy is gone
    for t in tasks(c):
        assert t["status"] == "completed" and t["source"] == f"mirror {c.url}"


def test_mirror_off_or_failing_agents_pull_directly_and_say_so(fleet: Fleet) -> None:
    up = upstream(fleet)
    off = fleet.coordinator(supported_models=[MODEL], mirror={"enabled": False})
    _fleet(fleet, off, up.url, 1)
    wait_until(lambda: _all_ready(off, 1), 30, 0.2, what="the agent with the model")
    assert [t["source"] for t in tasks(off)] == ["registry"]
    broken = mirror_coordinator(fleet, "http://127.0.0.1:9", supported_models=[MODEL])
    (sim,) = _fleet(fleet, broken, up.url, 1)
    wait_until(lambda: _all_ready(broken, 1), 30, 0.2, what="the agent with the model")
    (t,) = tasks(broken)
    assert t["source"].startswith("registry directly: the mirror answered")
    assert "HTTP 502" in t["source"]
    assert tags(sim) == [MODEL]


def test_corrupt_upstream_blob_fails_the_task_naming_it_and_a_retry_fetches_again(
    fleet: Fleet,
) -> None:
    up = upstream(fleet)
    digest = manifest(up)["layers"][0]["digest"]
    registry_knobs(up, corrupt=[digest])
    c = mirror_coordinator(fleet, up.url, supported_models=[MODEL])
    (sim,) = _fleet(fleet, c, up.url, 1)

    def failed() -> dict[str, Any] | None:
        found = [t for t in tasks(c) if t["status"] == "failed"]
        return found[0] if found else None

    t = wait_until(failed, 30, 0.2, what="the task failed")
    assert f"want {digest}" in t["error"]
    assert tags(sim) == []
    registry_knobs(up)
    with admin(c.url) as cl:
        assert cl.post(f"/api/tasks/{t['id']}/retry").status_code == 200
    wait_until(lambda: _all_ready(c, 1), 30, 0.2, what="the agent with the model")
    assert tags(sim) == [MODEL]
    assert upstream_served(up) >= 2 * manifest(up)["layers"][0]["size"]
