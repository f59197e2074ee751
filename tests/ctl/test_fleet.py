"""``fleetd ctl`` against a real coordinator, agents and sim-ollama: tables, --json, filters,
``distribute --wait`` and its exit status."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx

from tests.conftest import Fleet
from tests.ctl.conftest import Result, ctl, two_agent_fleet
from tests.distribution.conftest import SLOW, SMALL, restart_coordinator, tasks
from tests.procs import ADMIN_TOKEN, wait_until

EXTRA = "nomic-embed-text:latest"


def _row(table: str, name: str) -> str:
    [line] = [ln for ln in table.splitlines() if ln.startswith(name + " ")]
    return line


def test_agents_table_shows_readiness_gpus_load_and_last_seen(fleet: Fleet) -> None:
    c, _, ids = two_agent_fleet(fleet)
    r = ctl(c.url, "agents")
    assert r.code == 0, r.err
    header, *rows = r.out.splitlines()
    assert header.split() == ["NAME", "ID", "STATUS", "READY", "GPUS", "LOAD", "LAST", "SEEN"]
    assert len(rows) == 2
    gpu0 = _row(r.out, "gpu-0")
    assert ids["gpu-0"][:8] in gpu0
    assert " online " in gpu0
    assert " 2/2 " in gpu0
    assert "2×Sim H100 80G" in gpu0
    assert "0 req" in gpu0
    assert re.search(r"\b\d+s ago$", gpu0), gpu0
    assert "1×Sim H100 80G" in _row(r.out, "gpu-1")

    data = ctl(c.url, "agents", "--json").json()
    assert sorted(a["name"] for a in data["agents"]) == ["gpu-0", "gpu-1"]
    assert {a["id"] for a in data["agents"]} == set(ids.values())
    # --json is accepted before the command's name too.
    before = ctl(c.url, "--json", "agents").json()["agents"]
    assert sorted(a["id"] for a in before) == sorted(ids.values())


def test_distribute_wait_shows_each_agent_completed_and_exits_0(fleet: Fleet) -> None:
    c, _, ids = two_agent_fleet(fleet)
    # One agent by name, the other by a prefix of its id.
    r = ctl(c.url, "distribute", EXTRA, "--agent", "gpu-0", "--agent", ids["gpu-1"][:6], "--wait")
    assert r.code == 0, r.out + r.err
    lines = r.out.splitlines()
    assert lines[0] == f"{EXTRA} onto 2 agent(s):"
    # Not a terminal: one final line per agent, no cursor movement.
    assert "\x1b" not in r.out
    done = {ln.split()[0]: ln for ln in lines[1:]}
    assert sorted(done) == ["gpu-0", "gpu-1"]
    for line in done.values():
        assert "[" + "#" * 24 + "] 100%" in line
        assert "completed" in line
    assert all(t["status"] == "completed" for t in tasks(c, model=EXTRA))

    # The tasks table, its filters and --json.
    r = ctl(c.url, "tasks", "--model", EXTRA)
    assert r.code == 0, r.err
    rows = r.out.splitlines()[1:]
    assert len(rows) == 2
    assert all("completed" in row and "100%" in row for row in rows)
    only = ctl(c.url, "tasks", "--agent", "gpu-1", "--json").json()["tasks"]
    assert [(t["agent_id"], t["model"]) for t in only if t["model"] == EXTRA] == [
        (ids["gpu-1"], EXTRA)
    ]
    assert ctl(c.url, "tasks", "--status", "failed", "--json").json() == {"tasks": []}

    # Installed already: a warning, nothing to wait for, still a success.
    r = ctl(c.url, "distribute", EXTRA, "--all", "--wait")
    assert r.code == 0, r.err
    assert "already installed on agent gpu-0" in r.err


def test_distribute_wait_exits_non_zero_naming_the_agent_that_failed(fleet: Fleet) -> None:
    c, sims, _ = two_agent_fleet(fleet)
    message = "write /models/blobs/x-partial: no space left on device"
    fault = {"model": EXTRA, "kind": "fail", "at": 0.3, "message": message}
    assert httpx.post(sims[1].url + "/_sim/faults", json=fault).status_code == 200
    r = ctl(c.url, "distribute", EXTRA, "--all", "--wait")
    assert r.code == 1, r.out + r.err
    final = {ln.split()[0]: ln for ln in r.out.splitlines()[1:]}
    assert "completed" in final["gpu-0"] and "100%" in final["gpu-0"]
    assert f"failed: {message}" in final["gpu-1"]
    *_, err = r.err.strip().splitlines()  # warnings (e.g. registry unreachable) come first
    assert err == f"fleetd ctl: 1 of 2 targets did not get the model: gpu-1: failed: {message}"

    # --json: the final tasks, same verdict.
    r = ctl(c.url, "distribute", "nosuchmodel:7b", "--all", "--wait", "--json")
    assert r.code == 1
    final_tasks = r.json()["tasks"]
    assert [t["status"] for t in final_tasks] == ["failed", "failed"]
    assert "nosuchmodel:7b not found in the registry" in r.err


def test_distribute_without_wait_prints_the_tasks_it_ordered(fleet: Fleet) -> None:
    c, _, _ = two_agent_fleet(fleet)
    r = ctl(c.url, "distribute", EXTRA, "--agent", "gpu-1")
    assert r.code == 0, r.err
    header, row = r.out.splitlines()
    assert header.startswith("ID ") and "gpu-1" in row and EXTRA in row
    data = ctl(c.url, "distribute", SMALL[0], "--all", "--if-installed", "skip", "--json").json()
    assert data == {"tasks": [], "warnings": [], "errors": []}


def test_distribute_wait_on_a_terminal_redraws_bars_in_place(fleet: Fleet) -> None:
    c, _, _ = two_agent_fleet(fleet, *SLOW)  # each download takes seconds: several frames
    out = _on_a_terminal([c.url, "distribute", EXTRA, "--all", "--wait"])
    assert out.code == 0, out.err
    frames = out.out.split("\x1b[2F")  # each redraw goes back up over the two bars
    assert len(frames) > 2
    assert any("ETA" in f and "/s" in f for f in frames[1:-1])  # live speed and ETA
    last = [ln.replace("\x1b[2K", "") for ln in frames[-1].splitlines() if ln.strip()]
    assert len(last) == 2
    for line, name in zip(sorted(last), ["gpu-0", "gpu-1"], strict=True):
        assert line.startswith(name) and "100%" in line and "completed" in line


def _on_a_terminal(args: list[str]) -> Result:
    """``fleetd ctl args…`` with its stdout on a pseudo-terminal; what it drew, raw."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    env.update(FLEETD_ADMIN_TOKEN=ADMIN_TOKEN, COLUMNS="120")
    argv = [sys.executable, "-m", "fleetd", "ctl", "--coordinator", *args]
    p = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, env=env, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert p.stderr is not None
    err = p.stderr.read()
    p.stderr.close()
    code = p.wait(60)
    assert "Traceback" not in err, err
    return Result(code, b"".join(chunks).decode().replace("\r\n", "\n"), err)


def test_distribute_wait_rides_out_a_coordinator_restart(fleet: Fleet) -> None:
    c, _, _ = two_agent_fleet(fleet, *SLOW, "--bandwidth", "500KB")  # about 6 s each
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    env["FLEETD_ADMIN_TOKEN"] = ADMIN_TOKEN
    argv = [sys.executable, "-m", "fleetd", "ctl", "--coordinator", c.url]
    waiting = subprocess.Popen(
        [*argv, "distribute", EXTRA, "--all", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        wait_until(
            lambda: len(tasks(c, model=EXTRA, status="downloading")) == 2,
            what="both downloads running",
        )
        assert c.stop() == 0
        restart_coordinator(fleet, c, supported_models=SMALL)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, out + err
    final = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert sorted(final) == ["gpu-0", "gpu-1"]
    assert all("100%" in ln and "completed" in ln for ln in final.values())


def test_tasks_cancel_and_retry_by_id_prefix(fleet: Fleet) -> None:
    c, _, _ = two_agent_fleet(fleet, *SLOW, "--bandwidth", "200KB")  # a long download
    r = ctl(c.url, "distribute", EXTRA, "--agent", "gpu-0", "--json")
    [task] = r.json()["tasks"]
    r = ctl(c.url, "tasks", "cancel", task["id"][:6])
    assert (r.code, r.out.strip()) == (0, f"task {task['id']} ({EXTRA}): cancelled"), r.err
    assert (
        ctl(c.url, "tasks", "--status", "cancelled", "--json").json()["tasks"][0]["id"]
        == (task["id"])
    )
    r = ctl(c.url, "tasks", "cancel", task["id"][:6])
    assert (r.code, r.err.strip()) == (1, f"fleetd ctl: task {task['id']} is already cancelled")
    r = ctl(c.url, "tasks", "retry", task["id"])
    assert r.code == 0, r.err
    assert r.out.startswith(f"task {task['id']} ({EXTRA}): ")
    assert tasks(c, model=EXTRA)[0]["attempt"] == 1
