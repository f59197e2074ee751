"""The distribution policy as pure functions: which agents get a task, and the matrix states.
No processes: the registry, inventory and tasks are handed in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fleetd.coordinator.planning import matrix, plan
from fleetd.core.wire import Agent, Task

M = "llama3.2:1b"


def agent(agent_id: str, status: str = "online") -> Agent:
    return Agent(id=agent_id, name=f"gpu-{agent_id}", url="http://x", status=status)  # type: ignore[arg-type]


def task(agent_id: str, model: str = M, status: str = "queued", age_s: int = 0) -> Task:
    created = datetime(2026, 1, 1, tzinfo=timezone.utc) - timedelta(seconds=age_s)
    return Task(
        id=f"t-{agent_id}-{status}",
        agent_id=agent_id,
        model=model,
        status=status,  # type: ignore[arg-type]
        created_at=created,
    )


def codes(notices: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(n.get("agent_id", ""), n["code"]) for n in notices]


def test_each_agent_gets_one_task_unless_under_way_installed_or_offline() -> None:
    running = task("a2", status="downloading")
    agents = [agent("a1"), agent("a2"), agent("a3"), agent("a4", "offline")]
    p = plan(M, agents, active={"a2": running}, holders={"a3"})
    assert [a.id for a in p.create] == ["a1"]
    assert p.under_way == [running] and [a.id for a in p.installed] == ["a3"]
    assert codes(p.warnings) == [("a2", "already_in_progress"), ("a3", "already_installed")]
    assert codes(p.errors) == [("a4", "agent_offline")]
    assert p.wanted and not p.redownload


def test_skip_is_silent_and_redownload_orders_installed_agents_again() -> None:
    agents = [agent("a1"), agent("a2")]
    skip = plan(M, agents, active={}, holders={"a1", "a2"}, if_installed="skip")
    assert not skip.create and not skip.warnings and not skip.wanted
    again = plan(M, agents, active={}, holders={"a1", "a2"}, if_installed="redownload")
    assert [a.id for a in again.create] == ["a1", "a2"] and again.redownload and again.wanted


def test_an_offline_agent_waits_with_retry_when_online() -> None:
    p = plan(M, [agent("a1", "offline")], active={}, holders=(), if_offline="retry-when-online")
    assert [a.id for a in p.create] == ["a1"] and not p.errors


def test_an_offline_agent_that_has_the_model_is_not_an_error() -> None:
    p = plan(M, [agent("a1", "offline")], active={}, holders={"a1"}, if_installed="skip")
    assert not p.errors and not p.create and not p.wanted


def test_matrix_states_follow_the_latest_task_then_the_inventory() -> None:
    agents = [agent("a1"), agent("a2"), agent("a3"), agent("a4", "offline")]
    tasks = [
        task("a1", status="failed", age_s=10),
        task("a1", status="downloading"),  # the latest task of a1 decides
        task("a2", status="waiting"),
        task("a3", status="failed"),
        task("a4", model="other:7b", status="completed"),
    ]
    installed = {"a2": [M], "a3": [], "a4": ["other:7b", "zeta:1b"]}
    names, rows = matrix(agents, ["qwen2.5:0.5b", M], tasks, installed)
    assert names == ["qwen2.5:0.5b", M, "other:7b", "zeta:1b"]
    states = {r["id"]: r["models"] for r in rows}
    assert states["a1"] == {
        "qwen2.5:0.5b": "missing",
        M: "downloading",
        "other:7b": "missing",
        "zeta:1b": "missing",
    }
    assert states["a2"][M] == "queued"  # waiting shows as queued, even though installed
    assert states["a3"][M] == "failed"
    assert states["a4"]["other:7b"] == "installed" and states["a4"]["zeta:1b"] == "installed"
    assert rows[3]["status"] == "offline" and rows[3]["name"] == "gpu-a4"
