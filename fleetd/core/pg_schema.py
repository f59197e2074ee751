"""PostgreSQL's schema versions (twins of SQLite's), the contact table, and migrate()."""

from __future__ import annotations

import logging
from typing import Any

from fleetd.core.pgkeystore import PG_MIGRATION
from fleetd.core.pgtokens import SECRETS_TABLE
from fleetd.core.store import MIGRATIONS

log = logging.getLogger("fleetd.store")

Conn = Any  # asyncpg.Connection (asyncpg ships no type information)

PG_MIGRATIONS: list[str] = [
    # 1: agents, tasks, installed models, key-value cache
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        instance_id TEXT NOT NULL DEFAULT '',
        data BYTEA NOT NULL
    );
    CREATE INDEX agents_url ON agents(url);
    CREATE INDEX agents_instance ON agents(instance_id);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        status TEXT NOT NULL,
        data BYTEA NOT NULL
    );
    CREATE INDEX tasks_agent ON tasks(agent_id);
    CREATE TABLE installed (
        agent_id TEXT NOT NULL,
        model TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (agent_id, model)
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    """,
    # 2: when each agent's installed models were last read, one row per agent
    """
    CREATE TABLE installed_as_of (
        agent_id TEXT PRIMARY KEY,
        as_of TIMESTAMPTZ NOT NULL
    );
    INSERT INTO installed_as_of(agent_id, as_of)
        SELECT j.key, j.value::timestamptz
        FROM kv, jsonb_each_text(convert_from(kv.value, 'UTF8')::jsonb) AS j
        WHERE kv.key = 'installed_as_of';
    DELETE FROM kv WHERE key = 'installed_as_of';
    """,
    # 3: managed API keys and their usage per minute (core/pgkeystore.py)
    PG_MIGRATION,
]
assert len(PG_MIGRATIONS) == len(MIGRATIONS), "each SQLite schema version needs its PostgreSQL twin"

MIGRATION_LOCK = 0x666C656574640001
"""pg_advisory_xact_lock key: coordinators starting at once migrate one after the other."""

CONTACT_TABLE = """
    CREATE UNLOGGED TABLE IF NOT EXISTS fleetd_contact (
        agent_id TEXT PRIMARY KEY,
        seen_at TIMESTAMPTZ NOT NULL
    )
"""
"""When some coordinator last heard from each agent. Not part of the schema versions: it
exists only on PostgreSQL, where several coordinators share the fleet, and is written
constantly and worth nothing after a crash (a restarted coordinator gives every agent a full
timeout), hence UNLOGGED: no WAL, so heartbeats cost PostgreSQL little."""


async def migrate(conn: Conn, where: str) -> None:
    """Bring the database at ``where`` (for messages) to this fleetd's schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS fleetd_schema ("
            " version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM fleetd_schema")
        if version > len(PG_MIGRATIONS):
            raise RuntimeError(
                f"database {where} has schema version {version}, newer than this "
                f"fleetd ({len(PG_MIGRATIONS)}); upgrade fleetd"
            )
        for i, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO fleetd_schema(version) VALUES ($1)", i)
            log.info("database %s migrated to schema version %d", where, i)
        await conn.execute(CONTACT_TABLE)
        await conn.execute(SECRETS_TABLE)
