"""Running ``python -m fleetd ctl …`` as the operator would, and a small fleet to run it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.distribution.conftest import SMALL, agents
from tests.procs import ADMIN_TOKEN, SIM_GPU, Proc, wait_until


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def ctl(url: str | None, *args: str, token: str | None = ADMIN_TOKEN) -> Result:
    """``fleetd ctl [--coordinator url] args…`` with the admin token in the environment."""
    return fleetd("ctl", *(["--coordinator", url] if url else []), *args, token=token)


def fleetd(*args: str, token: str | None = ADMIN_TOKEN) -> Result:
    """``python -m fleetd args…`` with no FLEETD_* variable but the admin token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    if token is not None:
        env["FLEETD_ADMIN_TOKEN"] = token
    argv = [sys.executable, "-m", "fleetd", *args]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    return Result(p.returncode, p.stdout, p.stderr)


def two_agent_fleet(fleet: Fleet, *sim_args: str) -> tuple[Proc, list[Proc], dict[str, str]]:
    """A coordinator (SMALL supported) and two ready agents: gpu-0 with two GPUs, gpu-1 with
    one, each on its own sim-ollama. Returns the coordinator, the sims and name → id."""
    sims = [fleet.sim("--max-loaded-models", "8", *sim_args, wait=False) for _ in range(2)]
    c = fleet.coordinator(supported_models=SMALL)
    for i, s in enumerate(sims):
        s.wait_url()
        fleet.agent(
            c.url,
            ollama=s.url,
            registry_url=s.url,
            name=f"gpu-{i}",
            gpus=[SIM_GPU] * (2 - i),
        )

    def ready() -> dict[str, str] | None:
        listed = agents(c)
        if len(listed) == 2 and not any(a["initializing"] for a in listed):
            return {a["name"]: a["id"] for a in listed}
        return None

    ids: dict[str, str] = wait_until(ready, 30, what="two ready agents")
    return c, sims, ids


@pytest.fixture(autouse=True)
def no_tracebacks(fleet: Fleet) -> Iterator[None]:
    """Whatever ctl does to the fleet, no process logs a traceback."""
    yield
    for p in fleet.procs:
        assert "Traceback" not in p.log, f"{p.name} logged a traceback:\n{p.log}"
