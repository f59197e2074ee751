"""``[agent] coordinator_url`` as a list (interface.md): the first that answers is used."""

from __future__ import annotations

from tests.conftest import Fleet
from tests.distribution.conftest import PREINSTALLED, SMALL, wait_agent

DEAD = "http://127.0.0.1:9"


def test_an_agent_skips_a_coordinator_that_does_not_answer(fleet: Fleet) -> None:
    sim = fleet.sim(*PREINSTALLED)
    c = fleet.coordinator(supported_models=SMALL)
    a = fleet.agent(f"{DEAD},{c.url}", ollama=sim.url, registry_url=sim.url)
    a.wait_for_line(f"coordinator {DEAD} unreachable .*; moving to {c.url}")
    a.wait_for_line(f"registered with {c.url}")
    wait_agent(c, initializing=False)
