"""Nothing is lost when machines restart (E1): kill -9 of the agent, a coordinator restart,
an agent that goes offline mid-download."""

from __future__ import annotations

from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SLOW,
    agent_queue,
    distribute,
    ready_fleet,
    restart_coordinator,
    sim_state,
    task,
    tasks,
    wait_task,
)
from tests.procs import wait_until

EXTRA = "nomic-embed-text:latest"


def _at_least(c: object, task_id: str, fraction: float) -> dict[str, object]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (t := task(c, task_id))["progress"] >= fraction and t,  # type: ignore[arg-type]
        15,
        0.05,
        what=f"task {task_id} at {fraction:.0%}",
    )


def test_agent_killed_mid_download_resumes_where_it_was(fleet: Fleet) -> None:
    sim, c, a, agent_id = ready_fleet(fleet, *SLOW)
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    _at_least(c, t["id"], 0.3)
    a.kill()
    before = sim_state(sim)["partials"].get(EXTRA, 0)
    assert before > 0

    a2 = fleet.agent(c.url, ollama=sim.url, registry_url=sim.url, data_dir=a.data_dir)  # type: ignore[attr-defined]
    # The restarted agent knows the task from its own disk, bytes included, at once.
    [entry] = [e for e in agent_queue(a2)["tasks"] if e["task_id"] == t["id"]]
    assert entry["status"] in ("queued", "downloading")
    assert entry["completed_bytes"] > 0
    a2.wait_for_line("resuming 1 unfinished download")
    done = wait_task(c, t["id"], "completed")
    state = sim_state(sim)
    assert state["pulls"][EXTRA] == 2
    assert state["bytes_downloaded"][EXTRA] < 1.2 * done["total_bytes"]  # resumed, not restarted
    assert len(tasks(c, model=EXTRA)) == 1


def test_coordinator_restart_mid_download_loses_nothing(fleet: Fleet) -> None:
    sim, c, _, agent_id = ready_fleet(
        fleet, *PREINSTALLED, "--size-scale", "0.01", "--bandwidth", "600KB"
    )
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    seen = _at_least(c, t["id"], 0.15)
    c.kill()
    c2 = restart_coordinator(fleet, c, supported_models=["llama3.2:1b", "qwen2.5:0.5b"])
    after = wait_until(
        lambda: (x := task(c2, t["id"]))["completed_bytes"] > seen["completed_bytes"] and x,  # type: ignore[operator]
        10,
        0.05,
        what="progress after the restart",
    )
    assert after["status"] in ("downloading", "completed")
    wait_task(c2, t["id"], "completed")
    assert [x["id"] for x in tasks(c2, model=EXTRA)] == [t["id"]]
    assert sim_state(sim)["pulls"][EXTRA] == 1  # the agent never stopped


def test_agent_offline_mid_download_waits_then_continues(fleet: Fleet) -> None:
    sim, c, a, agent_id = ready_fleet(fleet, *SLOW, coordinator={"heartbeat_timeout_s": 1.5})
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    _at_least(c, t["id"], 0.2)
    assert a.stop() == 0
    waiting = wait_task(c, t["id"], "waiting", timeout=10)
    assert waiting["completed_bytes"] > 0 and waiting["speed_bps"] == 0

    fleet.agent(c.url, ollama=sim.url, registry_url=sim.url, data_dir=a.data_dir)  # type: ignore[attr-defined]
    done = wait_task(c, t["id"], "completed")
    assert sim_state(sim)["bytes_downloaded"][EXTRA] < 1.2 * done["total_bytes"]
