"""What only the PostgreSQL store does: its schema table, one bad write in a batch failing
alone, 503 while the server is down and recovery without a restart, start-up errors."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from fleetd.core.errors import StartupError
from fleetd.core.pg_schema import PG_MIGRATIONS
from fleetd.core.pgstore import PgStore, open_pg_store
from fleetd.core.store import StoreUnavailable
from fleetd.core.wire import Agent, Task
from tests.pg import PASSWORD, PgServer


async def test_schema_is_versioned_and_a_newer_one_is_refused(
    postgres: PgServer, pg_url: str
) -> None:
    s = await open_pg_store(pg_url, "coordinator.database_url")
    await s.close()
    db = pg_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT max(version) FROM fleetd_schema", db) == str(len(PG_MIGRATIONS))
    # Opening again applies nothing twice.
    s = await open_pg_store(pg_url, "coordinator.database_url")
    await s.close()
    assert postgres.psql("SELECT count(*) FROM fleetd_schema", db) == str(len(PG_MIGRATIONS))
    postgres.psql("INSERT INTO fleetd_schema(version) VALUES (999)", db)
    with pytest.raises(StartupError, match="schema version 999, newer than this fleetd"):
        await open_pg_store(pg_url, "coordinator.database_url")


async def test_schema_1_fleet_wide_as_of_moves_to_one_row_per_agent(
    postgres: PgServer, pg_url: str
) -> None:
    db = pg_url.rsplit("/", 1)[1]
    postgres.psql(
        "CREATE TABLE fleetd_schema (version INTEGER PRIMARY KEY,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
        + PG_MIGRATIONS[0]
        + "INSERT INTO fleetd_schema(version) VALUES (1);"
        "INSERT INTO kv(key, value) VALUES ('installed_as_of',"
        """ convert_to('{"a":"2026-11-24T08:00:00Z","b":"2026-11-24T08:00:01.5Z"}', 'UTF8'))""",
        db,
    )
    s = await open_pg_store(pg_url, "coordinator.database_url")
    assert await s.load_installed_as_of() == {
        "a": datetime(2026, 11, 24, 8, 0, 0, tzinfo=timezone.utc),
        "b": datetime(2026, 11, 24, 8, 0, 1, 500000, tzinfo=timezone.utc),
    }
    assert await s.get_kv("installed_as_of") is None
    await s.close()


async def test_a_refused_write_fails_alone_and_its_batch_lands(pg_url: str) -> None:
    s = await open_pg_store(pg_url, "coordinator.database_url")
    results = await asyncio.gather(
        *(s.save_tasks([Task(id=f"t{i}", agent_id="a", model="m:1")]) for i in range(50)),
        s.save_agents([Agent(id="bad\x00id", name="x", url="http://h:1")]),  # TEXT has no NUL
        return_exceptions=True,
    )
    assert results[:50] == [None] * 50
    assert "0x00" in str(results[50])
    assert len(await s.load_tasks()) == 50
    await s.close()


async def test_writes_fail_with_503_while_the_server_is_down_then_recover(
    postgres: PgServer, pg_url: str
) -> None:
    s = await open_pg_store(pg_url, "coordinator.database_url")
    await s.save_agents([Agent(id="a1", name="x", url="http://h:1")])
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable) as e:
            await s.save_agents([Agent(id="a2", name="y", url="http://h:2")])
        assert (e.value.status, e.value.code) == (503, "store_unavailable")
        assert PASSWORD not in e.value.message
        with pytest.raises(StoreUnavailable):
            await s.load_agents()
    finally:
        postgres.start()
    # The same store, not reopened: broken connections are replaced on their own.
    await s.save_agents([Agent(id="a3", name="z", url="http://h:3")])
    assert sorted(a.id for a in await s.load_agents()) == ["a1", "a3"]
    await s.close()


async def test_the_first_write_after_a_quick_restart_succeeds(
    postgres: PgServer, pg_url: str
) -> None:
    """Pooled connections died with the server; the first call after it is back must not
    fail on one of them."""
    s = await open_pg_store(pg_url, "coordinator.database_url")
    await s.set_kv("k", b"1")
    postgres.stop()
    postgres.start()
    await s.set_kv("k", b"2")
    assert await s.get_kv("k") == b"2"
    await s.close()


@pytest.mark.parametrize("what", ["password", "database", "port"])
async def test_a_wrong_url_is_one_line_naming_the_key_without_the_password(
    postgres: PgServer, pg_url: str, what: str
) -> None:
    url = {
        "password": postgres.url("postgres", password="wrong-secret"),
        "database": pg_url + "_missing",
        "port": pg_url.replace(f":{postgres.port}/", ":1/"),
    }[what]
    with pytest.raises(StartupError) as e:
        await open_pg_store(url, "coordinator.database_url")
    msg = str(e.value)
    assert msg.startswith("coordinator.database_url = 'postgresql://fleetd:***@127.0.0.1:")
    assert "cannot open the database" in msg
    assert "\n" not in msg
    assert "wrong-secret" not in msg and PASSWORD not in msg


async def test_closed_store_refuses_reads_and_writes(pg_url: str) -> None:
    s = PgStore(pg_url)
    await s.open()
    await s.close()
    for call in (s.load_tasks(), s.set_kv("k", b"v")):
        with pytest.raises(RuntimeError, match="closed"):
            await call
