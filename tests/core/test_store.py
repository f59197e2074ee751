"""The store contract, on SQLite and on PostgreSQL: round trips, batched writes from many
coroutines, schema versioning. SQLite-only checks are here too; PostgreSQL-only ones are in
test_pgstore.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fleetd.core.pgstore import PgStore
from fleetd.core.store import MIGRATIONS, SqliteStore, Store, StoreUnavailable
from fleetd.core.wire import Agent, InstalledModel, Task

Opener = Callable[[], Awaitable[Store]]


async def open_store(path: Path) -> SqliteStore:
    s = SqliteStore(path / "fleetd.db")
    await s.open()
    return s


@pytest.fixture(params=["sqlite", "postgres"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the same database again on each call: SQLite in tmp_path or a fresh PostgreSQL
    database of the session's server."""
    if request.param == "sqlite":
        return lambda: open_store(tmp_path)
    url = request.getfixturevalue("pg_url")

    async def open_pg() -> Store:
        s = PgStore(url)
        await s.open()
        return s

    return open_pg


async def test_agents_tasks_and_installed_survive_reopening(reopen: Opener) -> None:
    s = await reopen()
    a = Agent(id="a1", name="gpu-1", url="http://h:11435")
    t = Task(id="t1", agent_id="a1", model="gpt-oss:20b", status="downloading", progress=0.5)
    await asyncio.gather(
        s.save_agents([a]),
        s.save_tasks([t]),
        s.save_installed({"a1": [InstalledModel(name="qwen3-coder:30b", size=5)]}, {}),
        s.set_kv("catalog", b"{}"),
    )
    await s.close()
    s = await reopen()
    assert await s.load_agents() == [a]
    assert await s.load_tasks() == [t]
    assert await s.load_installed() == {"a1": [InstalledModel(name="qwen3-coder:30b", size=5)]}
    assert await s.get_kv("catalog") == b"{}"
    assert await s.get_kv("missing") is None
    await s.close()


async def test_many_concurrent_writes_all_land(reopen: Opener) -> None:
    s = await reopen()
    await asyncio.gather(
        *(s.save_tasks([Task(id=f"t{i}", agent_id="a", model="m:1")]) for i in range(300))
    )
    assert len(await s.load_tasks()) == 300
    await s.close()
    await s.close()  # idempotent


async def test_saving_installed_lists_replaces_only_the_agents_given(reopen: Opener) -> None:
    s = await reopen()
    x, y = InstalledModel(name="x:1", size=1), InstalledModel(name="y:1", size=2)
    await s.save_installed({"a": [x], "b": [x, y], "c": [y]}, {})
    await s.save_installed({"a": [y], "b": []}, {})  # c not given: left as it was
    assert await s.load_installed() == {"a": [y], "c": [y]}
    await s.close()


async def test_deleting_an_agent_and_tasks(reopen: Opener) -> None:
    """A removed agent takes its installed list along; its tasks stay until cleared."""
    s = await reopen()
    when = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
    for agent_id in ("a", "b"):
        await s.save_agents([Agent(id=agent_id, name=agent_id, url=f"http://{agent_id}:1")])
        await s.save_installed({agent_id: [InstalledModel(name="x:1", size=1)]}, {agent_id: when})
    await s.save_tasks([Task(id=f"t{i}", agent_id="a", model="x:1") for i in range(3)])
    await s.delete_agent("a")
    await s.delete_tasks(["t0", "t2"])
    await s.close()
    s = await reopen()
    assert [a.id for a in await s.load_agents()] == ["b"]
    assert list(await s.load_installed()) == ["b"]
    assert await s.load_installed_as_of() == {"b": when}
    assert [t.id for t in await s.load_tasks()] == ["t1"]
    await s.close()


async def test_installed_as_of_is_kept_per_agent(reopen: Opener) -> None:
    s = await reopen()
    first = datetime(2026, 11, 25, 9, 0, 0, 123456, tzinfo=timezone.utc)
    later = datetime(2026, 11, 25, 9, 5, tzinfo=timezone.utc)
    await s.save_installed({}, {"a": first, "b": first})
    await s.save_installed({}, {"b": later})
    await s.close()
    s = await reopen()
    assert await s.load_installed_as_of() == {"a": first, "b": later}
    await s.close()


async def test_schema_1_fleet_wide_as_of_moves_to_one_row_per_agent(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "fleetd.db")
    conn.executescript(MIGRATIONS[0])
    conn.execute(
        "INSERT INTO kv(key, value) VALUES ('installed_as_of', ?)",
        (b'{"a":"2026-11-24T08:00:00Z","b":"2026-11-24T08:00:01.5Z"}',),
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    s = await open_store(tmp_path)
    assert await s.load_installed_as_of() == {
        "a": datetime(2026, 11, 24, 8, 0, 0, tzinfo=timezone.utc),
        "b": datetime(2026, 11, 24, 8, 0, 1, 500000, tzinfo=timezone.utc),
    }
    assert await s.get_kv("installed_as_of") is None
    await s.close()


async def test_database_is_wal_and_versioned(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    await s.close()
    conn = sqlite3.connect(tmp_path / "fleetd.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.execute("PRAGMA user_version=999")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this fleetd"):
        await open_store(tmp_path)


async def test_closed_store_refuses_work(reopen: Opener) -> None:
    s = await reopen()
    await s.close()
    with pytest.raises(RuntimeError, match="closed"):
        await s.load_agents()


async def test_a_caller_that_leaves_does_not_stop_the_store(tmp_path: Path) -> None:
    """A client hanging up cancels its handler while the write waits in the queue; the store
    thread must drop that answer and keep serving (it used to die on InvalidStateError)."""
    s = await open_store(tmp_path)
    busy = threading.Event()
    release = threading.Event()

    def hold(c: sqlite3.Connection) -> None:
        busy.set()
        release.wait(10)

    held = asyncio.ensure_future(s._submit(hold))
    await asyncio.to_thread(busy.wait, 10)
    left = [asyncio.ensure_future(s.save_tasks([Task(id="t", agent_id="a", model="m:1")]))]
    left += [asyncio.ensure_future(s.load_tasks()) for _ in range(5)]
    await asyncio.sleep(0)  # each has queued its work
    for f in left:
        f.cancel()
    release.set()
    await held
    await s.save_tasks([Task(id="after", agent_id="a", model="m:1")])
    assert "after" in {t.id for t in await s.load_tasks()}
    assert await s.check() is None
    await s.close()


async def _fill(s: SqliteStore, n: int) -> None:
    await s.save_tasks([Task(id=f"big{n}-{i}", agent_id="a", model="m" * 2000) for i in range(50)])


async def test_a_full_disk_fails_writes_with_503_once_logged_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = await open_store(tmp_path)
    pages = await s._submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    # SQLite's own limit gives the very error a full disk gives: "database or disk is full".
    await s._submit(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchone())
    for n in range(3):
        with pytest.raises(StoreUnavailable) as e:
            await _fill(s, n)
        assert e.value.status == 503
        assert "database or disk is full" in e.value.message
    assert "database or disk is full" in (await s.check() or "")
    assert await s.load_tasks() == [], "reads still work; nothing half-written"
    faults = [r for r in caplog.records if "cannot write the database" in r.getMessage()]
    assert len(faults) == 1, "one log line, not one per write"

    await s._submit(lambda c: c.execute("PRAGMA max_page_count=1000000").fetchone())
    assert await s.check() is None, "space came back: the store says so by itself"
    await _fill(s, 9)
    assert len(await s.load_tasks()) == 50
    await s.close()


async def test_any_sqlite_error_of_a_batch_fails_its_callers_not_the_thread(
    tmp_path: Path,
) -> None:
    s = await open_store(tmp_path)

    def broken(c: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def bad_sql(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO nowhere VALUES (1)")

    results = await asyncio.gather(
        s._submit(broken, writes=True),
        s.save_tasks([Task(id="same-batch", agent_id="a", model="m:1")]),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    with pytest.raises(StoreUnavailable):
        await s._submit(bad_sql)
    await s.save_tasks([Task(id="later", agent_id="a", model="m:1")])
    assert [t.id for t in await s.load_tasks()] == ["later"]
    assert await s.check() is None
    await s.close()
