"""Counters kept in the store's ``kv`` table as one JSON object of integers, only ever added
to: coordinators sharing a database each add what they counted since their last save, so
none overwrites the others' counts (``Store.add_counts``)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

import msgspec

log = logging.getLogger("fleetd.store")

Counts = dict[str, int]


def decode_counts(raw: bytes | None, key: str) -> Counts:
    """The counters stored under ``key``; unreadable ones count from 0 again (logged)."""
    if raw is None:
        return {}
    try:
        return msgspec.json.decode(raw, type=Counts)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        log.warning("counters %r in the database unreadable (%s); counting from 0", key, e)
        return {}


def _added(raw: bytes | None, key: str, deltas: Mapping[str, int]) -> tuple[bytes, Counts]:
    totals = decode_counts(raw, key)
    for name, n in deltas.items():
        totals[name] = totals.get(name, 0) + n
    return msgspec.json.encode(totals), totals


def sqlite_add(c: sqlite3.Connection, key: str, deltas: Mapping[str, int]) -> Counts:
    """On the store's thread, the only writer: read, add, write is atomic."""
    row = c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    value, totals = _added(None if row is None else bytes(row[0]), key, deltas)
    c.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?,?)", (key, value))
    return totals


async def pg_add(conn: Any, key: str, deltas: Mapping[str, int]) -> Counts:
    """In the caller's transaction; the row lock makes concurrent adds wait for each other."""
    await conn.execute(
        "INSERT INTO kv(key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, b"{}"
    )
    raw = await conn.fetchval("SELECT value FROM kv WHERE key = $1 FOR UPDATE", key)
    value, totals = _added(bytes(raw), key, deltas)
    await conn.execute("UPDATE kv SET value = $2 WHERE key = $1", key, value)
    return totals
