"""Reaching PostgreSQL: timeouts, the errors meaning it is unreachable, password-free error text."""

from __future__ import annotations

import asyncio
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
