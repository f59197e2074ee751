"""Coordinators sharing one PostgreSQL accept the same admin and agent tokens (issue 21: the
tokens are shared state too): generated once for all, changed for all by one coordinator
restarted with new ones, carried over from SQLite by ``fleetd db migrate-sqlite`` or from the
files of a coordinator moved to PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Fleet
from tests.distribution.conftest import PREINSTALLED, SMALL
from tests.procs import ADMIN_TOKEN, Proc, wait_until

NO_TOKENS = {"FLEETD_ADMIN_TOKEN": "", "FLEETD_AGENT_TOKEN": ""}


def _files(c: Proc) -> tuple[str, str]:
    """The copies a coordinator keeps in its data_dir (what ``fleetd ctl`` reads there)."""
    data_dir: Path = c.data_dir  # type: ignore[attr-defined]
    return tuple(  # type: ignore[return-value]
        (data_dir / name).read_text().strip() for name in ("admin_token", "agent_token")
    )


def _agents(c: Proc, admin_token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {admin_token}"}
    return httpx.get(c.url + "/api/agents", headers=headers, timeout=10)


def _ready_agent_through(fleet: Fleet, c: Proc, agent_token: str, admin_token: str) -> None:
    """An agent holding ``agent_token`` registers through ``c`` and becomes ready, which
    takes the token both ways (the coordinator asks the agent for its models)."""
    sim = fleet.sim(*PREINSTALLED)
    env = {"FLEETD_AGENT_TOKEN": agent_token, "FLEETD_ADMIN_TOKEN": ""}
    fleet.agent(c.url, ollama=sim.url, registry_url=sim.url, env=env)
    wait_until(
        lambda: any(not a["initializing"] for a in _agents(c, admin_token).json()["agents"]),
        30,
        what="the agent ready",
    )


def test_coordinators_started_at_once_share_the_tokens_one_generated(
    fleet: Fleet, pg_url: str
) -> None:
    cfg = {"supported_models": SMALL, "database_url": pg_url}
    a = fleet.coordinator(env=NO_TOKENS, wait=False, **cfg)
    b = fleet.coordinator(env=NO_TOKENS, wait=False, **cfg)
    a.wait_url()
    b.wait_url()
    admin_token, agent_token = _files(a)
    assert _files(b) == (admin_token, agent_token)
    generated = [ln for c in (a, b) for ln in c.lines if "generated admin token" in ln]
    assert len(generated) == 1 and admin_token in generated[0], generated  # shown once

    # A's agent token admits an agent through B; A's admin token opens B's admin API.
    _ready_agent_through(fleet, b, agent_token, admin_token)
    assert _agents(b, admin_token).status_code == 200
    assert len(_agents(a, admin_token).json()["agents"]) == 1


def test_a_coordinator_restarted_with_new_tokens_changes_them_on_the_other_at_once(
    fleet: Fleet, pg_url: str
) -> None:
    cfg = {"supported_models": SMALL, "database_url": pg_url}
    a = fleet.coordinator(**cfg)
    b = fleet.coordinator(**cfg)
    assert _agents(b, ADMIN_TOKEN).status_code == 200
    assert a.stop() == 0

    new_admin, new_agent = "rotated-admin-token-0123456789", "rotated-agent-token-0123456789"
    env = {"FLEETD_ADMIN_TOKEN": new_admin, "FLEETD_AGENT_TOKEN": new_agent}
    a2 = fleet.coordinator(data_dir=a.data_dir, env=env, **cfg)  # type: ignore[attr-defined]
    replaced = [ln for ln in a2.lines if "replaces the" in ln and "stored in the database" in ln]
    assert len(replaced) == 2, a2.log  # one line per token

    # B, not restarted, takes them: the new admin token opens it, the old one no longer.
    wait_until(lambda: _agents(b, new_admin).status_code == 200, 10, what="new token on B")
    assert _agents(b, ADMIN_TOKEN).status_code == 401
    b.wait_for_line("agent token was changed in the database")
    assert _files(b) == (new_admin, new_agent)  # fleetd ctl on B's host reads the new one
    _ready_agent_through(fleet, b, new_agent, new_admin)
    for c in (a2, b):
        assert new_admin not in c.log and new_agent not in c.log


def test_migrate_sqlite_carries_the_token_files(fleet: Fleet, pg_url: str) -> None:
    c = fleet.coordinator(env=NO_TOKENS, supported_models=SMALL)  # SQLite, generated files
    admin_token, agent_token = _files(c)
    assert c.stop() == 0
    src: Path = c.data_dir  # type: ignore[attr-defined]
    migrate = fleet.start(["db", "migrate-sqlite", "--from", str(src), "--to", pg_url])
    assert migrate.wait_exit() == 0, migrate.log
    assert "tokens 2 from" in migrate.log and admin_token not in migrate.log

    c2 = fleet.coordinator(env=NO_TOKENS, supported_models=SMALL, database_url=pg_url)
    assert _files(c2) == (admin_token, agent_token)  # a fresh data_dir: from the database
    assert _agents(c2, admin_token).status_code == 200
    assert "generated" not in c2.log


def test_a_coordinator_moved_to_postgres_keeps_its_token_files(fleet: Fleet, pg_url: str) -> None:
    c = fleet.coordinator(env=NO_TOKENS, supported_models=SMALL)
    admin_token, agent_token = _files(c)
    assert c.stop() == 0
    # Same data_dir, now on PostgreSQL: its files become the fleet's tokens ...
    c2 = fleet.coordinator(
        data_dir=c.data_dir,  # type: ignore[attr-defined]
        env=NO_TOKENS,
        supported_models=SMALL,
        database_url=pg_url,
    )
    assert _agents(c2, admin_token).status_code == 200
    # ... which a second coordinator, with a data_dir of its own, accepts too.
    other = fleet.coordinator(env=NO_TOKENS, supported_models=SMALL, database_url=pg_url)
    assert _files(other) == (admin_token, agent_token)
    _ready_agent_through(fleet, other, agent_token, admin_token)
