"""PgStore's key and usage methods and schema version 3 in PostgreSQL's dialect (the twins
of core/keystore.py's)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import msgspec

from fleetd.core.keystore import (
    KEY_COLUMNS,
    TOTALS_SQL,
    USAGE_COLUMNS,
    DuplicateKeyName,
    KeyRow,
    UsageRow,
    key_row,
    key_values,
    usage_query,
)
from fleetd.core.pg_conn import Listener, listen

Conn = Any

PG_MIGRATION = """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        models TEXT,
        requests_per_minute BIGINT,
        tokens_per_day BIGINT,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
    CREATE TABLE key_usage (
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        bucket BIGINT NOT NULL,
        requests BIGINT NOT NULL DEFAULT 0,
        errors BIGINT NOT NULL DEFAULT 0,
        prompt_tokens BIGINT NOT NULL DEFAULT 0,
        completion_tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, model, bucket)
    );
    CREATE INDEX key_usage_bucket ON key_usage(bucket);
"""


CHANNEL = "fleetd_keys"
"""NOTIFY channel: a key was created or revoked (payload: its id), sent at commit."""


class PgKeyStore:
    """PgStore's key and usage methods (mixed into PgStore)."""

    url: str

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    async def watch_keys(self, changed: Callable[[], None]) -> Listener | None:
        """Other coordinators' creations and revocations, as they commit."""
        return await listen(self.url, CHANNEL, changed)

    async def _submit(self, op: Callable[[Conn], Awaitable[None]]) -> None:
        raise NotImplementedError

    async def load_keys(self) -> list[KeyRow]:
        rows = await self._fetch(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys")
        return [key_row(r) for r in rows]

    async def insert_key(self, key: KeyRow) -> None:
        values = key_values(key)
        marks = ",".join(f"${i}" for i in range(1, 11))
        sql = f"INSERT INTO api_keys({', '.join(KEY_COLUMNS)}) VALUES ({marks})"

        async def op(conn: Conn) -> None:
            try:
                await conn.execute(sql, *values)
            except asyncpg.UniqueViolationError:
                raise DuplicateKeyName(key.name) from None
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, key.id)

        await self._submit(op)

    async def revoke_key(self, key_id: str, at: float) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                at,
                key_id,
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, key_id)

        await self._submit(op)

    async def add_usage(
        self, rows: Iterable[UsageRow], last_used: Iterable[tuple[str, float]]
    ) -> None:
        values = [tuple(msgspec.to_builtins(r)) for r in rows]
        used = [(at, key_id) for key_id, at in last_used]

        async def op(conn: Conn) -> None:
            if values:
                await conn.executemany(
                    f"INSERT INTO key_usage({', '.join(USAGE_COLUMNS)})"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7)"
                    " ON CONFLICT (key_id, model, bucket) DO UPDATE SET"
                    " requests = key_usage.requests + EXCLUDED.requests,"
                    " errors = key_usage.errors + EXCLUDED.errors,"
                    " prompt_tokens = key_usage.prompt_tokens + EXCLUDED.prompt_tokens,"
                    " completion_tokens = key_usage.completion_tokens"
                    " + EXCLUDED.completion_tokens",
                    values,
                )
            if used:
                await conn.executemany(
                    "UPDATE api_keys SET last_used_at = $1 WHERE id = $2"
                    " AND (last_used_at IS NULL OR last_used_at < $1)",
                    used,
                )

        await self._submit(op)

    async def usage_totals(self, minute: int, day: int) -> dict[str, tuple[int, int]]:
        rows = await self._fetch(TOTALS_SQL.format(m="$1", d="$2"), minute, day)
        return {k: (int(r or 0), int(t or 0)) for k, r, t in rows}

    async def query_usage(
        self, key_id: str | None, model: str | None, since: int, until: int | None, interval: int
    ) -> list[UsageRow]:
        sql, args = usage_query(lambda i: f"${i}", key_id, model, since, until, interval)
        rows = await self._fetch(sql, *args)
        # sum() of BIGINT is NUMERIC in PostgreSQL (Decimal here).
        return [UsageRow(r[0], r[1], *(int(v) for v in r[2:])) for r in rows]

    async def prune_usage(self, before: int) -> int:
        # Several coordinators may prune at once: the same DELETE, harmless twice.
        rows = await self._fetch(
            "WITH gone AS (DELETE FROM key_usage WHERE bucket < $1 RETURNING 1)"
            " SELECT count(*) FROM gone",
            before,
        )
        return int(rows[0][0])
