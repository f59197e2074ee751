"""Tokens that open the door too wide: equal admin and agent tokens refuse to start, short
ones are warned about, guessing is throttled per address, data_dir and database are private."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetd.core.throttle import Throttle
from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, admin, wait_until


def test_admin_token_equal_to_agent_token_refuses_to_start(fleet: Fleet) -> None:
    same = {"FLEETD_ADMIN_TOKEN": AGENT_TOKEN}
    for proc in (
        fleet.coordinator(env=same, wait=False),
        fleet.agent("http://127.0.0.1:9", env=same, wait=False),
    ):
        assert proc.wait_exit() == 1
        errors = [line for line in proc.lines if "admin token equals the agent token" in line]
        assert len(errors) == 1, proc.log
        assert "Traceback" not in proc.log


def test_short_tokens_are_warned_about_once(fleet: Fleet) -> None:
    coord = fleet.coordinator(env={"FLEETD_ADMIN_TOKEN": "short"})
    coord.wait_for_line(r"admin token is only 5 characters long; use at least 16")
    assert "agent token is only" not in coord.log


def _wrong(url: str, kind: str) -> httpx.Response:
    if kind == "bearer":
        return httpx.get(f"{url}/api/agents", headers={"Authorization": "Bearer guess"})
    if kind == "session":
        return httpx.post(f"{url}/api/session", json={"token": "guess"})
    return httpx.get(f"{url}/?token=guess")


def test_failed_token_checks_are_throttled_per_address(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    kinds = ["bearer", "session", "query"] * 4
    statuses = [_wrong(coord.url, k).status_code for k in kinds[:10]]
    assert statuses == [401, 401, 303] * 3 + [401]
    for kind in ("bearer", "session", "query"):
        r = _wrong(coord.url, kind)
        assert r.status_code == 429, kind
        assert r.json()["error"]["code"] == "too_many_failures"
        assert 0 < int(r.headers["Retry-After"]) <= 60
    # While refused, even the right token is not checked (no oracle for a lucky guess) ...
    with admin(coord.url) as c:
        assert c.get("/api/agents").status_code == 429
        # ... but requests that present no token are not affected.
        assert c.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert len([ln for ln in coord.lines if "failed token check" in ln]) == 1, coord.log


def test_agent_throttles_failed_token_checks_too(fleet: Fleet) -> None:
    sim = fleet.sim()
    coord = fleet.coordinator()
    agent = fleet.agent(coord.url, sim.url)
    bad = {"Authorization": "Bearer guess"}
    codes = [httpx.get(f"{agent.url}/fleetd/status", headers=bad).status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]
    good = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    assert httpx.get(f"{agent.url}/fleetd/status", headers=good).status_code == 429


def test_throttle_logs_one_summary_per_address_and_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FakeRequest:
        remote = "192.0.2.7"

    t = Throttle(max_failures=1000)
    with caplog.at_level(logging.WARNING, "fleetd.auth"):
        for _ in range(25):
            t.failed(FakeRequest(), "admin token")  # type: ignore[arg-type]
        t.report()
        t.report()  # nothing new: nothing logged
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "failed token check from 192.0.2.7 (admin token); more from there are summed up "
        "each minute",
        "25 failed token checks from 192.0.2.7 in the last minute",
    ]


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_data_dirs_are_0700_and_database_files_0600(
    fleet: Fleet, tmp_path: Path, loose_umask: None
) -> None:
    sim = fleet.sim()
    (tmp_path / "coord").mkdir()
    coord = fleet.coordinator(data_dir=tmp_path / "coord" / "nested")
    agent = fleet.agent(coord.url, sim.url, data_dir=tmp_path / "agent-data")
    with admin(coord.url) as c:
        wait_until(lambda: c.get("/api/agents").json()["agents"], what="the agent to register")
    db = tmp_path / "coord" / "nested" / "fleetd.db"
    wait_until(lambda: Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists())
    for d in (db.parent, tmp_path / "agent-data"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), db.parent / "agent_token"):
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert coord.stop() == 0 and agent.stop() == 0
    assert ADMIN_TOKEN not in coord.log
