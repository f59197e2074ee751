"""Managed API keys in memory: looked up by the SHA-256 of the secret a client sends.

The database holds the keys (hashed); this ring is the coordinator's copy, changed at once by
its own creations and revocations, reloaded when PostgreSQL says another coordinator changed
a key, and from the database every few seconds anyway (usage.py).
The secret itself is shown once, in the reply that creates the key, and never logged.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterable

from aiohttp import web

from fleetd.core.keystore import KeyRow

SECRET_PREFIX = "fk-"
"""Every managed key starts so, which tells it apart from the admin token at a glance."""
PREFIX_CHARS = 10
"""How much of the secret ``prefix`` shows (``fk-`` and 7 random characters)."""

OPEN = KeyRow(id="", name="(no key)", prefix="", hash="", created_at=0.0)
"""The caller when inference is open: no static and no managed key exists."""
STATIC = KeyRow(id="static", name="(static key)", prefix="", hash="", created_at=0.0)
"""Every caller with a key of FLEETD_API_KEYS (they carry no name, limits or models)."""


def digest(secret: str) -> str:
    # A header that is not UTF-8 reaches us with its bytes kept as surrogates: hash those
    # bytes (no key matches them) rather than fail the request with a 500.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """Active keys by hash, revoked hashes, every key by id (usage names revoked keys too)."""

    def __init__(self) -> None:
        self.by_hash: dict[str, KeyRow] = {}
        self.by_id: dict[str, KeyRow] = {}
        self.revoked: set[str] = set()

    @property
    def exist(self) -> bool:
        """Any managed key, revoked ones included: revoking the last key must not open the
        fleet to everyone."""
        return bool(self.by_id)

    def replace(self, rows: Iterable[KeyRow]) -> None:
        """The database's keys; last use times seen here and not yet written are kept."""
        by_hash: dict[str, KeyRow] = {}
        by_id: dict[str, KeyRow] = {}
        revoked: set[str] = set()
        for row in rows:
            mine = self.by_id.get(row.id)
            if mine is not None and (mine.last_used_at or 0) > (row.last_used_at or 0):
                row.last_used_at = mine.last_used_at
            by_id[row.id] = row
            if row.revoked_at is None:
                by_hash[row.hash] = row
            else:
                revoked.add(row.hash)
        self.by_hash, self.by_id, self.revoked = by_hash, by_id, revoked

    def add(self, row: KeyRow) -> None:
        self.by_id[row.id] = row
        self.by_hash[row.hash] = row

    def revoke(self, row: KeyRow, at: float) -> None:
        row.revoked_at = at
        self.by_hash.pop(row.hash, None)
        self.revoked.add(row.hash)

    def find(self, name_or_id: str) -> KeyRow | None:
        """A key by id, else the active key of that name."""
        row = self.by_id.get(name_or_id)
        if row is not None:
            return row
        return next((k for k in self.by_hash.values() if k.name == name_or_id), None)

    def name_of(self, key_id: str) -> str:
        for special in (OPEN, STATIC):
            if key_id == special.id:
                return special.name
        row = self.by_id.get(key_id)
        return row.name if row is not None else key_id

    def is_key(self, secret: str) -> bool:
        """``secret`` is a managed key, active or revoked."""
        h = digest(secret)
        return h in self.by_hash or h in self.revoked


def new_key(
    name: str, models: list[str] | None, rpm: int | None, tpd: int | None
) -> tuple[KeyRow, str]:
    secret = new_secret()
    row = KeyRow(
        id=uuid.uuid4().hex[:16],
        name=name,
        prefix=secret[:PREFIX_CHARS],
        hash=digest(secret),
        models=models,
        requests_per_minute=rpm,
        tokens_per_day=tpd,
        created_at=time.time(),
    )
    return row, secret


KEYS = web.AppKey("keys", KeyRing)
