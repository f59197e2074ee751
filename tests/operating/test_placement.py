"""Placement by labels and GPU memory (issue 22 item 4): the first matching rule gives an agent
its own model set; a model that cannot fit an agent's GPUs is not ordered there by itself,
the matrix says why, and a manual order warns first."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Fleet
from tests.distribution.conftest import PREINSTALLED, SMALL, agents, distribute, tasks
from tests.procs import Proc, admin, wait_until

EXTRA = "nomic-embed-text:latest"
BIG_GPU = {"name": "Sim H100", "memory_bytes": 85_899_345_920}
TINY_GPU = {"name": "Sim tiny", "memory_bytes": 100_000}
"""With --size-scale 0.0001: qwen2.5:0.5b (40 kB) and nomic-embed-text (27 kB) fit,
llama3.2:1b (132 kB) does not."""


def by_name(c: Proc) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in agents(c)}


def matrix(c: Proc) -> dict[str, Any]:
    with admin(c.url) as cl:
        r = cl.get("/api/models/matrix")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def test_rules_by_labels_and_vram_with_mixed_gpus(fleet: Fleet) -> None:
    sims = [fleet.sim("--max-loaded-models", "8", *PREINSTALLED, wait=False) for _ in range(2)]
    sims.append(fleet.sim("--preinstall", "qwen2.5:0.5b", wait=False))  # for the tiny GPU
    for s in sims:
        s.wait_url()
    c = fleet.coordinator(
        supported_models=SMALL,
        registry_url=sims[0].url,  # sizes from a registry that has the models
        placement=[
            {"match": {"gpu": "h100", "zone": "a"}, "models": ["llama3.2:1b", EXTRA]},
            {"match": {"gpu": "h100"}, "models": [EXTRA]},
        ],
    )
    common = {"disk_margin_bytes": 0}
    fleet.agent(
        c.url,
        sims[0].url,
        name="big-a",
        registry_url=sims[0].url,
        gpus=[BIG_GPU],
        labels={"gpu": "h100", "zone": "a"},
        **common,
    )
    fleet.agent(
        c.url,
        sims[1].url,
        name="big-b",
        registry_url=sims[1].url,
        gpus=[BIG_GPU],
        labels={"gpu": "h100"},
        **common,
    )
    fleet.agent(
        c.url, sims[2].url, name="tiny", registry_url=sims[2].url, gpus=[TINY_GPU], **common
    )

    def settled() -> dict[str, dict[str, Any]] | None:
        found = by_name(c)
        want = {"big-a": 2, "big-b": 1, "tiny": 1}
        if len(found) == 3 and all(
            not found[n]["initializing"]
            and found[n]["total_models"] == k
            and found[n]["ready_models"] == k
            for n, k in want.items()
        ):
            return found
        return None

    found = wait_until(settled, 30, what="each agent ready with its own set")
    assert found["big-a"]["labels"] == {"gpu": "h100", "zone": "a"}
    # Only the first matching rule counts; no rule: the supported list, less what cannot fit.
    assert {t["model"] for t in tasks(c, agent=found["big-a"]["id"])} == {EXTRA}
    assert {t["model"] for t in tasks(c, agent=found["big-b"]["id"])} == {EXTRA}
    assert tasks(c, agent=found["tiny"]["id"]) == []
    ids = [m["id"] for m in httpx.get(c.url + "/v1/models", timeout=5).json()["data"]]
    assert ids == [*SMALL, EXTRA]

    m = matrix(c)
    [tiny] = [row for row in m["agents"] if row["name"] == "tiny"]
    assert tiny["models"]["llama3.2:1b"] == "too_large"
    assert "GPU memory" in tiny["reasons"]["llama3.2:1b"]
    assert tiny["models"]["qwen2.5:0.5b"] == "installed"

    r = distribute(c, "llama3.2:1b", [found["tiny"]["id"]])
    assert r.status_code == 200, r.text
    assert r.json()["tasks"] == []
    [warning] = [w for w in r.json()["warnings"] if w["code"] == "exceeds_vram"]
    assert warning["agent_id"] == found["tiny"]["id"]
    r = distribute(c, "llama3.2:1b", [found["tiny"]["id"]], if_too_large="order")
    assert r.status_code == 200, r.text
    assert len(r.json()["tasks"]) == 1
    assert "Traceback" not in c.log


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"match": {"gpu": "h100"}, "models": ["a"], "bogus": "x"}, "placement[0].bogus"),
        ({"match": {"gpu": "h100"}, "models": ["Bad Name!"]}, "placement[0].models[0]"),
    ],
)
def test_bad_placement_rule_is_a_config_error_naming_the_key(
    fleet: Fleet, rule: dict[str, Any], says: str
) -> None:
    c = fleet.coordinator(wait=False, placement=[rule])
    assert c.wait_exit() != 0
    assert f"coordinator.{says}" in c.log
    assert "Traceback" not in c.log
