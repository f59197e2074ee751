"""Managed API keys and their usage in the database: the rows, schema version 3 for SQLite,
and SqliteStore's methods for them (PostgreSQL's twins are in core/pgkeystore.py).

A key is stored as the SHA-256 of its secret, never the secret. Usage is one row per key,
model and minute (``bucket``, unix seconds), incremented by batched upserts, so several
coordinators sharing a database add to the same rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

import msgspec

T = TypeVar("T")

SQLITE_MIGRATION = """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        models TEXT,
        requests_per_minute INTEGER,
        tokens_per_day INTEGER,
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
    CREATE TABLE key_usage (
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, model, bucket)
    );
    CREATE INDEX key_usage_bucket ON key_usage(bucket)
"""
"""Schema 3: managed API keys, usage per key, model and minute."""

KEY_COLUMNS = (
    "id",
    "name",
    "prefix",
    "hash",
    "models",
    "requests_per_minute",
    "tokens_per_day",
    "created_at",
    "last_used_at",
    "revoked_at",
)
USAGE_COLUMNS = (
    "key_id",
    "model",
    "bucket",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
)


class KeyRow(msgspec.Struct, kw_only=True):
    """One managed key as stored; times are unix seconds."""

    id: str
    name: str
    prefix: str
    hash: str
    models: list[str] | None = None
    """None: every model."""
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


class UsageRow(msgspec.Struct, array_like=True):
    """Counts of one key and model in one bucket (a minute when written; wider when read
    with an interval; ``bucket`` 0 when read without one)."""

    key_id: str
    model: str
    bucket: int
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class DuplicateKeyName(ValueError):
    """Another active key has this name (possibly created on another coordinator)."""


class KeyWatch(Protocol):
    """A subscription to key changes made by other coordinators."""

    def alive(self) -> bool: ...
    async def close(self) -> None: ...


class KeyStore(Protocol):
    """What the Store offers for keys and usage (both backends)."""

    async def watch_keys(self, changed: Callable[[], None]) -> KeyWatch | None:
        """Call ``changed`` when another coordinator creates or revokes a key (None: the
        backend cannot tell, and the periodic reload is all there is)."""
        ...

    async def load_keys(self) -> list[KeyRow]: ...
    async def insert_key(self, key: KeyRow) -> None: ...
    async def revoke_key(self, key_id: str, at: float) -> None: ...
    async def add_usage(
        self, rows: Iterable[UsageRow], last_used: Iterable[tuple[str, float]]
    ) -> None: ...
    async def usage_totals(self, minute: int, day: int) -> dict[str, tuple[int, int]]: ...
    async def query_usage(
        self, key_id: str | None, model: str | None, since: int, until: int | None, interval: int
    ) -> list[UsageRow]: ...
    async def prune_usage(self, before: int) -> int:
        """Delete usage buckets older than ``before``; how many rows went."""
        ...


def key_row(values: Iterable[Any]) -> KeyRow:
    d = dict(zip(KEY_COLUMNS, values, strict=True))
    models = d["models"]
    d["models"] = None if models is None else msgspec.json.decode(models, type=list[str])
    return msgspec.convert(d, KeyRow)


def key_values(key: KeyRow) -> tuple[Any, ...]:
    models = None if key.models is None else msgspec.json.encode(key.models).decode()
    return (
        key.id,
        key.name,
        key.prefix,
        key.hash,
        models,
        key.requests_per_minute,
        key.tokens_per_day,
        key.created_at,
        key.last_used_at,
        key.revoked_at,
    )


def usage_query(
    param: Callable[[int], str],
    key_id: str | None,
    model: str | None,
    since: int,
    until: int | None,
    interval: int,
) -> tuple[str, list[Any]]:
    """SQL summing usage over the range, grouped by key and model (and by bucket of
    ``interval`` seconds unless it is 0); ``param(i)`` spells the i-th placeholder."""
    args: list[Any] = [since]
    where = [f"bucket >= {param(1)}"]
    for column, value in (("bucket <", until), ("key_id =", key_id), ("model =", model)):
        if value is not None:
            args.append(value)
            where.append(f"{column} {param(len(args))}")
    bucket = f"(bucket / {int(interval)}) * {int(interval)}" if interval else "0"
    sql = (
        f"SELECT key_id, model, {bucket} AS b, sum(requests), sum(errors),"
        " sum(prompt_tokens), sum(completion_tokens) FROM key_usage"
        f" WHERE {' AND '.join(where)} GROUP BY key_id, model, b ORDER BY b, key_id, model"
    )
    return sql, args


TOTALS_SQL = (
    "SELECT key_id, sum(CASE WHEN bucket >= {m} THEN requests ELSE 0 END),"
    " sum(prompt_tokens + completion_tokens) FROM key_usage WHERE bucket >= {d} GROUP BY key_id"
)
"""Per key: requests in the current minute, tokens in the current (UTC) day."""


class SqliteKeyStore:
    """SqliteStore's key and usage methods (mixed into SqliteStore)."""

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], writes: bool = False) -> T:
        raise NotImplementedError

    async def watch_keys(self, changed: Callable[[], None]) -> KeyWatch | None:
        return None  # one coordinator per SQLite database: every change is its own

    async def load_keys(self) -> list[KeyRow]:
        sql = f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys"
        rows = await self._submit(lambda c: c.execute(sql).fetchall())
        return [key_row(r) for r in rows]

    async def insert_key(self, key: KeyRow) -> None:
        values = key_values(key)
        sql = f"INSERT INTO api_keys({', '.join(KEY_COLUMNS)}) VALUES ({','.join('?' * 10)})"

        def write(c: sqlite3.Connection) -> None:
            try:
                c.execute(sql, values)
            except sqlite3.IntegrityError:
                raise DuplicateKeyName(key.name) from None

        await self._submit(write, writes=True)

    async def revoke_key(self, key_id: str, at: float) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, key_id),
            )

        await self._submit(write, writes=True)

    async def add_usage(
        self, rows: Iterable[UsageRow], last_used: Iterable[tuple[str, float]]
    ) -> None:
        values = [tuple(msgspec.to_builtins(r)) for r in rows]
        used = [(at, key_id, at) for key_id, at in last_used]

        def write(c: sqlite3.Connection) -> None:
            c.executemany(
                f"INSERT INTO key_usage({', '.join(USAGE_COLUMNS)}) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT(key_id, model, bucket) DO UPDATE SET"
                " requests = requests + excluded.requests, errors = errors + excluded.errors,"
                " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens",
                values,
            )
            c.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                used,
            )

        await self._submit(write, writes=True)

    async def usage_totals(self, minute: int, day: int) -> dict[str, tuple[int, int]]:
        sql = TOTALS_SQL.format(m="?", d="?")
        rows = await self._submit(lambda c: c.execute(sql, (minute, day)).fetchall())
        return {k: (int(r or 0), int(t or 0)) for k, r, t in rows}

    async def query_usage(
        self, key_id: str | None, model: str | None, since: int, until: int | None, interval: int
    ) -> list[UsageRow]:
        sql, args = usage_query(lambda _: "?", key_id, model, since, until, interval)
        rows = await self._submit(lambda c: c.execute(sql, args).fetchall())
        return [UsageRow(*r) for r in rows]

    async def prune_usage(self, before: int) -> int:
        def write(c: sqlite3.Connection) -> int:
            return c.execute("DELETE FROM key_usage WHERE bucket < ?", (before,)).rowcount

        return await self._submit(write, writes=True)
