"""Keys and usage in the store, the same on SQLite and on PostgreSQL (issue 23)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from fleetd.core.keystore import DuplicateKeyName, KeyRow, UsageRow
from fleetd.core.pgstore import PgStore
from fleetd.core.store import SqliteStore, Store

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgres"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    async def open_sqlite() -> Store:
        s = SqliteStore(tmp_path / "fleetd.db")
        await s.open()
        return s

    if request.param == "sqlite":
        return open_sqlite
    url = request.getfixturevalue("pg_url")

    async def open_pg() -> Store:
        s = PgStore(url)
        await s.open()
        return s

    return open_pg


def key(id: str, name: str, **kw: object) -> KeyRow:
    return KeyRow(id=id, name=name, prefix="fk-" + id, hash="h" + id, created_at=1.5, **kw)  # type: ignore[arg-type]


async def test_keys_round_trip_and_names_are_unique_among_active_keys(reopen: Opener) -> None:
    s = await reopen()
    a = key("a", "team", models=["qwen2.5:0.5b"], requests_per_minute=5, tokens_per_day=900)
    await s.insert_key(a)
    with pytest.raises(DuplicateKeyName):
        await s.insert_key(key("b", "team"))
    await s.revoke_key("a", 10.0)
    await s.insert_key(key("c", "team"))  # the name is free again
    await s.add_usage([], [("c", 20.0)])
    await s.add_usage([], [("c", 15.0)])  # an older last use does not go back in time
    await s.close()
    s = await reopen()
    got = {k.id: k for k in await s.load_keys()}
    assert got["a"].models == ["qwen2.5:0.5b"] and got["a"].revoked_at == 10.0
    assert (got["a"].requests_per_minute, got["a"].tokens_per_day) == (5, 900)
    assert got["c"].models is None and got["c"].revoked_at is None
    assert got["c"].last_used_at == 20.0
    await s.close()


async def test_usage_adds_up_across_writes_and_sums_by_range(reopen: Opener) -> None:
    s = await reopen()
    day = 86400 * 20000
    await s.add_usage(
        [UsageRow("a", "m:1", day, 1, 0, 10, 20), UsageRow("a", "m:1", day + 3600, 2, 1, 5, 5)], []
    )
    # A second coordinator adds to the same minute.
    await s.add_usage([UsageRow("a", "m:1", day, 1, 0, 1, 2), UsageRow("b", "m:2", day, 3)], [])
    assert await s.usage_totals(day + 3600, day) == {"a": (2, 43), "b": (0, 0)}
    whole = await s.query_usage(None, None, day, None, 0)
    assert whole == [UsageRow("a", "m:1", 0, 4, 1, 16, 27), UsageRow("b", "m:2", 0, 3)]
    hourly = await s.query_usage("a", "m:1", 0, None, 3600)
    assert [r.bucket for r in hourly] == [day, day + 3600] and hourly[0].prompt_tokens == 11
    assert await s.query_usage(None, None, day + 60, day + 3600, 0) == []
    assert await s.query_usage(None, "m:2", 0, None, 0) == [UsageRow("b", "m:2", 0, 3)]
    await s.close()


async def test_postgres_tells_other_coordinators_of_key_changes(pg_url: str) -> None:
    """Creations and revocations are NOTIFYed at commit, so other coordinators reload their
    keys at once instead of at their next 2 s sync."""
    one, two = PgStore(pg_url), PgStore(pg_url)
    await one.open()
    await two.open()
    heard = asyncio.Event()
    watch = await two.watch_keys(heard.set)
    assert watch is not None and watch.alive()
    try:
        await one.insert_key(key("a", "team"))
        await asyncio.wait_for(heard.wait(), 10)
        heard.clear()
        await one.revoke_key("a", 5.0)
        await asyncio.wait_for(heard.wait(), 10)
    finally:
        await watch.close()
        await one.close()
        await two.close()
    assert not watch.alive()


async def test_sqlite_has_no_one_else_to_watch(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "fleetd.db")
    await s.open()
    assert await s.watch_keys(lambda: None) is None
    await s.close()
