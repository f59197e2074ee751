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
from tests.procs import Proc, wait_until


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
