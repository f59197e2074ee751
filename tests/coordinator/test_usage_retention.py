"""Usage rows past ``coordinator.usage_retention_days`` are deleted; recent ones stay. Both
database backends."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import Fleet
from tests.procs import Proc, admin

INSERT = (
    "INSERT INTO key_usage(key_id, model, bucket, requests, errors, prompt_tokens,"
    " completion_tokens) VALUES ('static', 'llama3.2:1b', {}, 1, 0, 5, 7)"
)


def _usage_buckets(url: str) -> list[int]:
    with admin(url) as c:
        r = c.get("/api/usage", params={"interval": "60"})
    assert r.status_code == 200, r.text
    times = [
        datetime.fromisoformat(row["time"].replace("Z", "+00:00")) for row in r.json()["usage"]
    ]
    return sorted(int(t.timestamp()) for t in times)


def _with_rows(
    fleet: Fleet, request: pytest.FixtureRequest, buckets: list[int], **settings: Any
) -> Proc:
    """A coordinator restarted on a database that already holds usage rows at ``buckets``."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        fleet.coordinator(database_url=url).stop()

        async def insert() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("DELETE FROM key_usage")
                await conn.executemany(INSERT.format("$1"), [(b,) for b in buckets])
            finally:
                await conn.close()

        asyncio.run(insert())
        return fleet.coordinator(database_url=url, **settings)
    c = fleet.coordinator()
    data_dir: Path = c.data_dir  # type: ignore[attr-defined]
    assert c.stop() == 0
    db = sqlite3.connect(data_dir / "fleetd.db")
    with db:
        db.executemany(INSERT.format("?"), [(b,) for b in buckets])
    db.close()
    return fleet.coordinator(data_dir=data_dir, **settings)


backends = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


@backends
def test_old_usage_rows_are_deleted_and_recent_ones_kept(
    fleet: Fleet, backend: pytest.FixtureRequest
) -> None:
    now = int(time.time()) // 60 * 60
    old, recent = now - 40 * 86400, now - 86400
    c = _with_rows(fleet, backend, [old, recent], usage_retention_days=30)
    c.wait_for_line(r"deleted 1 usage rows older than 30 days")
    assert _usage_buckets(c.url) == [recent]


@backends
def test_zero_keeps_usage_forever(fleet: Fleet, backend: pytest.FixtureRequest) -> None:
    ancient = 86400  # 1970-01-02
    c = _with_rows(fleet, backend, [ancient], usage_retention_days=0)
    assert _usage_buckets(c.url) == [ancient]


@pytest.mark.parametrize("days", [-1, "x"])
def test_bad_retention_is_a_config_error_naming_the_key(fleet: Fleet, days: object) -> None:
    c = fleet.coordinator(wait=False, usage_retention_days=days)
    assert c.wait_exit() != 0
    assert "coordinator.usage_retention_days" in c.log
