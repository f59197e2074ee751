"""Automatic distribution on registration, and residency of the supported models (M3–M5)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import (
    SMALL,
    agents,
    pulls,
    ready_fleet,
    sim_state,
    tasks,
    wait_agent,
)
from tests.procs import admin, wait_until


def forever(expires_at: str) -> bool:
    """keep_alive -1 puts expires_at about 292 years ahead."""
    return expires_at[:4].isdigit() and int(expires_at[:4]) > 2200


def test_registration_downloads_missing_models_and_records_preinstalled(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(fleet, "--preinstall", "qwen2.5:0.5b")
    info = wait_agent(c, initializing=False)
    assert (info["ready_models"], info["total_models"]) == (2, 2)
    # Only the missing model was downloaded; the preinstalled one was recorded, not pulled.
    assert pulls(sim, "llama3.2:1b") == 1
    assert pulls(sim, "qwen2.5:0.5b") == 0
    [t] = tasks(c, agent=agent_id)
    assert (t["model"], t["status"], t["progress"]) == ("llama3.2:1b", "completed", 1.0)
    assert t["completed_bytes"] == t["total_bytes"] > 0
    with admin(c.url) as cl:
        matrix = cl.get("/api/models/matrix").json()
        models = cl.get(f"/api/agents/{agent_id}/models").json()
    assert matrix["models"][:2] == SMALL
    assert matrix["agents"][0]["models"] == {m: "installed" for m in SMALL}
    assert sorted(m["name"] for m in models["models"]) == sorted(SMALL)
    assert models["source"] == "agent"
    assert all(m["size"] > 0 and m["installed_at"] for m in models["models"])
    # Both are resident for good (keep_alive -1 shows a year far ahead).
    loaded = {m["name"]: m["expires_at"] for m in sim_state(sim)["loaded"]}
    assert set(loaded) == set(SMALL)
    assert all(forever(v) for v in loaded.values()), loaded


def test_evicted_model_is_loaded_again(fleet: Fleet) -> None:
    sim, c, _, _ = ready_fleet(fleet)
    loads_before = sim_state(sim)["loads"]["qwen2.5:0.5b"]
    r = httpx.post(sim.url + "/_sim/evict", json={"model": "qwen2.5:0.5b"})
    assert r.json() == {"evicted": True}

    def reloaded() -> bool:
        state = sim_state(sim)
        loaded = {m["name"]: m["expires_at"] for m in state["loaded"]}
        return (
            forever(loaded.get("qwen2.5:0.5b", ""))
            and state["loads"]["qwen2.5:0.5b"] == loads_before + 1
        )

    wait_until(reloaded, 5, what="qwen2.5:0.5b resident again")
    wait_agent(c, initializing=False, ready_models=2)


def test_model_reloaded_with_finite_keep_alive_is_made_resident_again(fleet: Fleet) -> None:
    sim, _, _, _ = ready_fleet(fleet)
    httpx.post(sim.url + "/_sim/evict", json={"model": "llama3.2:1b"})
    # A client request without keep_alive reloads it for the default 5 minutes only.
    httpx.post(
        sim.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi", "stream": False}
    )

    def resident() -> bool:
        loaded = {m["name"]: m["expires_at"] for m in sim_state(sim)["loaded"]}
        return forever(loaded.get("llama3.2:1b", ""))

    wait_until(resident, 5, what="llama3.2:1b resident for good again")


def test_gpus_too_small_for_all_models_is_said_plainly(fleet: Fleet) -> None:
    sim = fleet.sim("--max-loaded-models", "1")
    c = fleet.coordinator(supported_models=SMALL)
    fleet.agent(c.url, ollama=sim.url, registry_url=sim.url)

    def stuck() -> dict[str, Any] | None:
        [a] = agents(c)
        return a if "cannot hold" in a["status_message"] else None

    info = wait_until(stuck, 20, 0.1, what="a status message about GPU memory")
    assert info["initializing"] is True
    assert info["ready_models"] <= 1
    assert "evicted" in str(info["status_message"])
    # It backs off instead of loading in a circle: the residency check runs once per heartbeat
    # (0.5 s here), so four more heartbeats with no new load mean several checks held back.
    loads = sum(sim_state(sim)["loads"].values())
    seen = {info["last_seen"]}
    wait_until(
        lambda: seen.add(agents(c)[0]["last_seen"]) or len(seen) > 4,
        10,
        0.1,
        what="four more heartbeats",
    )
    assert sum(sim_state(sim)["loads"].values()) == loads


def test_installed_models_answer_from_cache_when_the_agent_hangs(fleet: Fleet) -> None:
    _, c, a, agent_id = ready_fleet(fleet)
    os.kill(a.popen.pid, signal.SIGSTOP)  # alive but silent: the slowest agent there is
    try:
        with admin(c.url) as cl:
            started = time.monotonic()
            r = cl.get(f"/api/agents/{agent_id}/models")
            took = time.monotonic() - started
    finally:
        os.kill(a.popen.pid, signal.SIGCONT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert took < 3.0
    assert body["source"] == "cache" and body["as_of"] and body["stale_reason"]
    assert sorted(m["name"] for m in body["models"]) == sorted(SMALL)


def test_models_spread_over_several_ollama_servers(fleet: Fleet) -> None:
    sims = [fleet.sim("--max-loaded-models", "8", wait=False) for _ in range(2)]
    c = fleet.coordinator(supported_models=SMALL)
    for s in sims:
        s.wait_url()
    fleet.agent(c.url, ollama=[s.url for s in sims], registry_url=sims[0].url)
    info = wait_agent(c, initializing=False)
    assert info["ready_models"] == 2
    installed = [{m["name"] for m in sim_state(s)["installed"]} for s in sims]
    # One supported model on each server: their VRAM load is spread.
    assert sorted(len(i) for i in installed) == [1, 1] and installed[0] | installed[1] == set(SMALL)
    for s, names in zip(sims, installed, strict=True):
        assert {m["name"] for m in sim_state(s)["loaded"]} == names


def test_supported_embedding_model_is_kept_resident(fleet: Fleet) -> None:
    """Embedding models refuse /api/generate; the agent loads them through /api/embed."""
    sim, c, _, _ = ready_fleet(
        fleet, coordinator={"supported_models": ["qwen2.5:0.5b", "nomic-embed-text:latest"]}
    )
    info = wait_agent(c, initializing=False)
    assert (info["ready_models"], info["total_models"]) == (2, 2)
    loaded = {m["name"]: m["expires_at"] for m in sim_state(sim)["loaded"]}
    assert forever(loaded["nomic-embed-text:latest"]), loaded
