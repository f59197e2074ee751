"""Reaching PostgreSQL: timeouts, the errors meaning it is unreachable, password-free error
text, and LISTENing on a channel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, reset, name resolution
    asyncio.TimeoutError,
    asyncpg.InterfaceError,  # connection closed under us
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53: disk full, too many connections
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby after failover
)


def describe(e: BaseException, url: str) -> str:
    """One line saying what went wrong, never the password (some errors echo the DSN)."""
    text = " ".join(str(e).split()) or type(e).__name__
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {p for p in (password, unquote(password or "")) if p}:
        text = text.replace(secret, "***")
    return text


class Listener:
    """One connection of its own LISTENing on a channel (pooled connections come and go)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def alive(self) -> bool:
        return not self.conn.is_closed()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.conn.close(), 5)
        except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError):
            self.conn.terminate()


async def listen(
    url: str, channel: str, heard: Callable[[], None], lost: Callable[[], None] | None = None
) -> Listener:
    """Call ``heard`` at each NOTIFY on ``channel`` (and ``lost`` when the connection ends);
    a ``RuntimeError`` saying why, password hidden, when the database cannot be reached."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except Exception as e:
        raise RuntimeError(describe(e, url)) from None
    try:
        await conn.add_listener(channel, lambda *_: heard())
        if lost is not None:
            conn.add_termination_listener(lambda _c: lost())
    except Exception as e:
        conn.terminate()
        raise RuntimeError(describe(e, url)) from None
    return Listener(conn)
