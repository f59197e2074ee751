"""Every failure of ``fleetd ctl`` is one line naming the fault, exit status 1, no traceback:
an unreachable coordinator, a refused or missing token, an unknown or ambiguous agent."""

from __future__ import annotations

import socket

from tests.conftest import Fleet
from tests.ctl.conftest import ctl, fleetd, two_agent_fleet
from tests.distribution.conftest import SMALL
from tests.procs import write_toml


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_coordinator_is_one_line() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (["agents"], ["distribute", "llama3.2:1b", "--all", "--wait"], ["drain", "x"]):
        r = ctl(url, *args)
        assert (r.code, r.out) == (1, ""), args
        assert r.err == f"fleetd ctl: coordinator unreachable at {url}: connection refused\n"
    # fleetd's own --coordinator (an agent flag) before `ctl` is honoured too.
    r = fleetd("--coordinator", url, "ctl", "agents")
    assert r.err == f"fleetd ctl: coordinator unreachable at {url}: connection refused\n"
    r = ctl("localhost:8080", "agents")
    assert r.err == (
        "fleetd ctl: --coordinator: expected an http:// or https:// URL, got 'localhost:8080'\n"
    )


def test_refused_token_and_no_token(fleet: Fleet) -> None:
    c = fleet.coordinator(supported_models=SMALL)
    r = ctl(c.url, "agents", token="wrong")
    assert (r.code, r.out) == (1, "")
    assert r.err == (
        f"fleetd ctl: the coordinator at {c.url} refused the admin token (HTTP 401); "
        "check FLEETD_ADMIN_TOKEN or the token file\n"
    )
    r = ctl(c.url, "agents", "--data-dir", str(fleet.tmp / "empty"), token=None)
    assert r.code == 1
    assert r.err.startswith("fleetd ctl: no admin token: set FLEETD_ADMIN_TOKEN")
    assert str(fleet.tmp / "empty" / "admin_token") in r.err


def test_token_file_found_through_data_dir_or_config(fleet: Fleet) -> None:
    # No token in the environment: the coordinator generates its file in data_dir.
    c = fleet.coordinator(env={"FLEETD_ADMIN_TOKEN": ""}, supported_models=SMALL)
    data_dir = c.data_dir  # type: ignore[attr-defined]
    r = ctl(c.url, "agents", "--data-dir", str(data_dir), token=None)
    assert (r.code, r.out) == (0, "no agents have registered yet\n"), r.err
    # The coordinator's config gives both its address and its data_dir.
    port = c.url.rsplit(":", 1)[1]
    cfg = write_toml(
        fleet.tmp / "ctl.toml",
        {"coordinator": {"listen": f"0.0.0.0:{port}", "data_dir": str(data_dir)}},
    )
    r = ctl(None, "--config", str(cfg), "agents", "--json", token=None)
    assert (r.code, r.json()) == (0, {"agents": []}), r.err


def test_unknown_and_ambiguous_agents(fleet: Fleet) -> None:
    c, _, _ = two_agent_fleet(fleet)
    for args in (
        ["drain", "nope"],
        ["remove", "nope"],
        ["tasks", "--agent", "nope"],
        ["distribute", "llama3.2:1b", "--agent", "gpu-0", "--agent", "nope"],
    ):
        r = ctl(c.url, *args)
        assert (r.code, r.out, r.err) == (
            1,
            "",
            "fleetd ctl: unknown agent 'nope': no agent has that name or id "
            "(fleetd ctl agents lists them)\n",
        ), args
    r = ctl(c.url, "drain", "gpu-")
    assert r.code == 1
    assert r.err.startswith("fleetd ctl: agent 'gpu-' is ambiguous: it matches gpu-")

    r = ctl(c.url, "distribute", "llama3.2:1b")
    assert r.code == 2 and "give either --all or one or more --agent" in r.err
    r = ctl(c.url, "distribute", "Bad Name!", "--all")
    assert (r.code, r.err) == (1, "fleetd ctl: model: invalid model name 'Bad Name!'\n")
