"""The admin and agent tokens in PostgreSQL, shared by every coordinator of the database.

With SQLite the tokens are files in ``data_dir`` (core/tokens.py); on PostgreSQL the table
``fleetd_secrets`` holds them, so that coordinators behind one load balancer accept the same
tokens, and a change written by one reaches the others by ``NOTIFY fleetd_tokens``
(coordinator/token_sync.py decides which value wins).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fleetd.core.pg_conn import Listener, listen

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)

SECRETS_TABLE = """
    CREATE TABLE IF NOT EXISTS fleetd_secrets (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""
"""Not one of the numbered schema versions, which SQLite shares (each has a twin there): the
table exists only on PostgreSQL, as SQLite's coordinator keeps its tokens in files. Created
by ``migrate`` under its lock."""

CHANNEL = "fleetd_tokens"
"""NOTIFY channel: a token was written (payload: its name), sent at commit."""

NAMES = ("admin_token", "agent_token")
"""The rows of ``fleetd_secrets``, named as the files in ``data_dir``."""


class PgTokenStore:
    """PgStore's token methods (mixed into PgStore)."""

    url: str

    async def _with_conn(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def load_secrets(self) -> dict[str, str]:
        async def read(conn: Conn) -> dict[str, str]:
            rows = await conn.fetch("SELECT name, value FROM fleetd_secrets")
            return {name: value for name, value in rows}

        return await self._with_conn(read)

    async def claim_secret(self, name: str, value: str) -> tuple[str, bool]:
        """``value`` stored unless ``name`` already is; the stored value, and whether it is
        ``value`` written now (coordinators starting at once end with the first one's)."""

        async def claim(conn: Conn) -> tuple[str, bool]:
            async with conn.transaction():
                won = await conn.fetchval(
                    "INSERT INTO fleetd_secrets(name, value) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO NOTHING RETURNING true",
                    name,
                    value,
                )
                if won:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, name)
                    return value, True
            stored = await conn.fetchval("SELECT value FROM fleetd_secrets WHERE name = $1", name)
            return str(stored), False

        return await self._with_conn(claim)

    async def put_secret(self, name: str, value: str) -> bool:
        """``value`` stored as ``name``, announced when it changed; whether it replaced a
        different value."""

        async def put(conn: Conn) -> bool:
            async with conn.transaction():
                old = await conn.fetchval(
                    "SELECT value FROM fleetd_secrets WHERE name = $1 FOR UPDATE", name
                )
                if old == value:
                    return False
                await write_secret(conn, name, value)
                return old is not None

        return await self._with_conn(put)

    async def watch_secrets(self, changed: Callable[[], None]) -> Listener:
        """``changed`` at each token written by any coordinator, and when the listening
        connection is lost (news may then have been missed)."""
        return await listen(self.url, CHANNEL, changed, lost=changed)


async def write_secret(conn: Conn, name: str, value: str) -> None:
    """In the caller's transaction: store ``value`` as ``name`` and announce it."""
    await conn.execute(
        "INSERT INTO fleetd_secrets(name, value) VALUES ($1, $2)"
        " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        name,
        value,
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, name)
