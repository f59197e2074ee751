"""Helpers for the inference tests: ready fleets of real processes, sim counters and state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Fleet
from tests.procs import Proc, admin, wait_until

CHAT = "qwen2.5:0.5b"
CHAT2 = "llama3.2:1b"
SUPPORTED = [CHAT, CHAT2]
"""The supported models of these tests: two tiny ones, preinstalled, so agents are ready fast."""
EMBED = "nomic-embed-text:latest"
"""Installed on the sims but not supported: reached through the agents' installed lists, and
its keep_alive is the client's business."""
MESSAGES = [{"role": "user", "content": "hello"}]


def sim_state(sim: Proc) -> dict[str, Any]:
    r = httpx.get(sim.url + "/_sim/state", timeout=5)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def sim_post(sim: Proc, path: str, body: dict[str, Any] | None = None) -> None:
    httpx.post(sim.url + path, json=body or {}, timeout=5).raise_for_status()


def loaded(sim: Proc) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in sim_state(sim)["loaded"]}


def resident_forever(m: dict[str, Any]) -> bool:
    """Loaded with keep_alive -1: Ollama shows an expiry centuries ahead (year 2318)."""
    return bool(m["expires_at"] > "2300")


def requests_served(sim: Proc, model: str = CHAT) -> int:
    return int(sim_state(sim)["requests"].get(model, 0))


def agents(coordinator: Proc) -> list[dict[str, Any]]:
    with admin(coordinator.url) as c:
        r = c.get("/api/agents")
        r.raise_for_status()
        found: list[dict[str, Any]] = r.json()["agents"]
        return found


def wait_ready(coordinator: Proc, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The coordinator's agents once ``n`` of them are online and not initializing."""

    def check() -> list[dict[str, Any]] | None:
        ready = [
            a for a in agents(coordinator) if a["status"] == "online" and not a["initializing"]
        ]
        return ready if len(ready) >= n else None

    found: list[dict[str, Any]] = wait_until(check, timeout, 0.1, what=f"{n} ready agent(s)")
    return found


@dataclass
class Setup:
    coordinator: Proc
    sims: list[Proc] = field(default_factory=list)
    agents: list[Proc] = field(default_factory=list)


def start(
    fleet: Fleet,
    n_agents: int = 1,
    *,
    sim_args: tuple[str, ...] = (),
    preinstall: tuple[str, ...] = (*SUPPORTED, EMBED),
    coordinator_env: dict[str, str] | None = None,
    wait: bool = True,
    agent_settings: dict[str, Any] | None = None,
    **coordinator_settings: Any,
) -> Setup:
    """A coordinator with ``SUPPORTED`` and ``n_agents`` agents, each over its own sim."""
    coordinator_settings.setdefault("supported_models", SUPPORTED)
    coordinator_settings.setdefault("heartbeat_timeout_s", 5)
    coord = fleet.coordinator(env=coordinator_env, **coordinator_settings)
    setup = Setup(coord)
    for i in range(n_agents):
        args = [a for m in preinstall for a in ("--preinstall", m)]
        sim = fleet.sim(*args, *sim_args)
        setup.sims.append(sim)
        settings = {"name": f"gpu-{i}", "registry_url": sim.url, **(agent_settings or {})}
        setup.agents.append(fleet.agent(coord.url, sim.url, **settings))
    if wait:
        wait_ready(coord, n_agents)
    return setup


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One ready coordinator + agent for the tests that only read or infer."""
    fleet = Fleet(Path(tmp_path_factory.mktemp("inference")))
    try:
        yield start(fleet)
    finally:
        fleet.close()
