"""A coordinator on PostgreSQL (issue 21, the store): state across restarts, a SQLite database
migrated with ``fleetd db migrate-sqlite``, the database restarting under a running
coordinator, and a wrong ``database_url`` at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from fleetd.cli import main
from tests.conftest import Fleet
from tests.distribution.conftest import (
    PREINSTALLED,
    SMALL,
    agents,
    distribute,
    ready_fleet,
    restart_coordinator,
    tasks,
    wait_task,
)
from tests.pg import PASSWORD, PgServer
from tests.procs import AGENT_TOKEN, SIM_GPU, Proc, wait_until

EXTRA = "nomic-embed-text:latest"


def _fleet_state(c: Proc) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    a = sorted((x["id"], x["name"], x["url"]) for x in agents(c))
    t = sorted((x["id"], x["agent_id"], x["model"], x["status"]) for x in tasks(c))
    return a, t


def test_agents_and_tasks_survive_a_restart_in_postgres(fleet: Fleet, pg_url: str) -> None:
    _, c, _, agent_id = ready_fleet(fleet, *PREINSTALLED, coordinator={"database_url": pg_url})
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    wait_task(c, t["id"], "completed")
    before = _fleet_state(c)
    assert c.stop() == 0
    data_dir: Path = c.data_dir  # type: ignore[attr-defined]
    assert not (data_dir / "fleetd.db").exists()  # nothing went to SQLite

    c2 = restart_coordinator(fleet, c, supported_models=SMALL, database_url=pg_url)
    assert _fleet_state(c2) == before
    assert [x["id"] for x in agents(c2)] == [agent_id]


def test_a_migrated_sqlite_database_shows_the_same_fleet(
    fleet: Fleet, postgres: PgServer, pg_url: str
) -> None:
    _, c, a, agent_id = ready_fleet(fleet, *PREINSTALLED)
    [t] = distribute(c, EXTRA, [agent_id]).json()["tasks"]
    wait_task(c, t["id"], "completed")
    a.kill()
    before = _fleet_state(c)
    assert c.stop() == 0
    src: Path = c.data_dir  # type: ignore[attr-defined]

    migrate = fleet.start(["db", "migrate-sqlite", "--from", str(src), "--to", pg_url])
    assert migrate.wait_exit() == 0, migrate.log
    # kv 1: the supported list, stored on the first start.
    # tokens 0: they came from the environment, so there are no token files to carry.
    copied = "agents 1, tasks 1, installed 3, installed_as_of 1, kv 1, api_keys 0, key_usage 0"
    copied += ", tokens 0"
    assert f"copied {copied} from" in migrate.log
    assert PASSWORD not in migrate.log

    # Twice is refused without --force (the target is not empty), the same with it.
    again = fleet.start(["db", "migrate-sqlite", "--from", str(src / "fleetd.db"), "--to", pg_url])
    assert again.wait_exit() == 1
    assert "already holds fleetd data (agents 1" in again.log and "--force" in again.log
    forced = fleet.start(["db", "migrate-sqlite", "--from", str(src), "--to", pg_url, "--force"])
    assert forced.wait_exit() == 0, forced.log
    db = pg_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT count(*) FROM agents", db) == "1"

    c2 = fleet.coordinator(supported_models=SMALL, database_url=pg_url)  # a fresh data_dir
    assert _fleet_state(c2) == before


def _register(url: str) -> httpx.Response:
    body = {"name": "probe", "url": "http://127.0.0.1:9", "gpus": [SIM_GPU]}
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    return httpx.post(url + "/api/agents", json=body, headers=headers, timeout=30)


def test_postgres_restarting_under_a_running_coordinator(
    fleet: Fleet, postgres: PgServer, pg_url: str
) -> None:
    _, c, _, _ = ready_fleet(fleet, *PREINSTALLED, coordinator={"database_url": pg_url})
    chat = {"model": SMALL[0], "messages": [{"role": "user", "content": "hi"}]}
    postgres.stop()
    try:
        r = _register(c.url)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable"
        assert PASSWORD not in r.text
        # The database is not on the inference path.
        assert httpx.post(c.url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200
    finally:
        postgres.start()
    # No restart of the coordinator: its pool reconnects by itself.
    r = wait_until(lambda: (r := _register(c.url)).status_code == 200 and r, 30, 0.2)
    assert r.json()["id"] in {x["id"] for x in agents(c)}
    c.wait_for_line("reachable again")


def test_a_wrong_database_url_exits_1_with_one_line(fleet: Fleet, postgres: PgServer) -> None:
    url = postgres.url("postgres", password="not-the-password")
    c = fleet.coordinator(wait=False, database_url=url)
    assert c.wait_exit() == 1
    lines = [ln for ln in c.lines if "database_url" in ln]
    assert len(lines) == 1, c.log
    assert "coordinator.database_url = 'postgresql://fleetd:***@127.0.0.1:" in lines[0]
    assert "password authentication failed" in lines[0]
    assert "not-the-password" not in c.log and "Traceback" not in c.log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "/nonexistent", "--to", "postgresql://u@h/d"], "no SQLite database there"),
        (
            ["--from", ".", "--to", "mysql://u:hunter2@h/d"],
            "--to: expected a postgresql:// URL (or empty for SQLite in data_dir), "
            "got 'mysql://u:***@h/d'",
        ),
    ],
)
def test_migrate_sqlite_bad_arguments_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "fleetd.db").touch()
    args = [str(tmp_path) if a == "." else a for a in args]
    result = CliRunner().invoke(main, ["db", "migrate-sqlite", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output
