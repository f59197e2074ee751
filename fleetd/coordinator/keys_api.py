"""Admin routes of managed API keys and their usage: ``/api/keys``, ``/api/usage``."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import msgspec
from aiohttp import web

from fleetd.coordinator.auth import require_admin
from fleetd.coordinator.gateway import GATEWAY
from fleetd.coordinator.keys import KEYS, new_key
from fleetd.coordinator.usage import ACCOUNTS
from fleetd.core.errors import bad_request, not_found
from fleetd.core.http import json_response, read_json
from fleetd.core.keystore import DuplicateKeyName, KeyRow
from fleetd.core.names import InvalidModelName, normalize

routes = web.RouteTableDef()

NAME_MAX = 64


class Limits(msgspec.Struct):
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None


class NewKey(msgspec.Struct):
    name: str
    models: list[str] | None = None
    limits: Limits | None = None


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def key_json(k: KeyRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "models": k.models,
        "limits": {
            "requests_per_minute": k.requests_per_minute,
            "tokens_per_day": k.tokens_per_day,
        },
        "created_at": _iso(k.created_at),
        "last_used_at": _iso(k.last_used_at),
    }
    if k.revoked_at is not None:
        out["revoked_at"] = _iso(k.revoked_at)
    return out


def _name(request: web.Request, raw: str) -> str:
    name = raw.strip()
    if not name:
        raise bad_request("name: must not be empty", param="name")
    if len(name) > NAME_MAX or not name.isprintable():
        raise bad_request(
            f"name: at most {NAME_MAX} printable characters, got {raw!r}", param="name"
        )
    if any(k.name == name for k in request.app[KEYS].by_hash.values()):
        raise bad_request(
            f"name: a key named {name!r} already exists", code="name_taken", param="name"
        )
    return name


def _models(request: web.Request, raw: list[str] | None) -> list[str] | None:
    if raw is None:
        return None
    if not raw:
        raise bad_request(
            "models: the list is empty; leave models out to allow every model", param="models"
        )
    gateway = request.app[GATEWAY]
    out: list[str] = []
    for i, m in enumerate(raw):
        try:
            name = normalize(m)
        except InvalidModelName:
            raise bad_request(f"models[{i}]: invalid model name {m!r}", param="models") from None
        if not gateway.pools.has_model(name):
            raise bad_request(
                f"models[{i}]: unknown model {m!r} (neither supported nor on any agent)",
                code="model_not_found",
                param="models",
            )
        if name not in out:
            out.append(name)
    return out


def _limit(value: int | None, field: str) -> int | None:
    if value is not None and value < 1:
        raise bad_request(
            f"limits.{field}: must be a positive whole number (leave it out for no limit), "
            f"got {value}",
            param=f"limits.{field}",
        )
    return value


@routes.post("/api/keys")
async def create_key(request: web.Request) -> web.Response:
    """A new key; its secret is in this reply only."""
    require_admin(request)
    req = await read_json(request, NewKey)
    name = _name(request, req.name)
    models = _models(request, req.models)
    limits = req.limits or Limits()
    rpm = _limit(limits.requests_per_minute, "requests_per_minute")
    tpd = _limit(limits.tokens_per_day, "tokens_per_day")
    row, secret = new_key(name, models, rpm, tpd)
    accounts = request.app[ACCOUNTS]
    async with accounts.lock:
        try:
            await accounts.store.insert_key(row)
        except DuplicateKeyName:
            raise bad_request(
                f"name: a key named {name!r} already exists", code="name_taken", param="name"
            ) from None
        request.app[KEYS].add(row)
    return json_response(key_json(row) | {"key": secret}, status=201)


@routes.get("/api/keys")
async def list_keys(request: web.Request) -> web.Response:
    """Active keys, oldest first; ``?revoked=true`` adds the revoked ones."""
    require_admin(request)
    ring = request.app[KEYS]
    revoked = request.query.get("revoked", "false").lower() in ("1", "true", "yes")
    keys = ring.by_id.values() if revoked else ring.by_hash.values()
    return json_response({"keys": [key_json(k) for k in sorted(keys, key=lambda k: k.created_at)]})


@routes.delete("/api/keys/{id}")
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke at once here; other coordinators hear of it by NOTIFY (PostgreSQL) or at
    their next sync."""
    require_admin(request)
    ring = request.app[KEYS]
    row = ring.find(request.match_info["id"])
    if row is None:
        raise not_found(f"no API key with id {request.match_info['id']!r}", code="unknown_key")
    if row.revoked_at is None:
        accounts = request.app[ACCOUNTS]
        async with accounts.lock:
            at = time.time()
            await accounts.store.revoke_key(row.id, at)
            ring.revoke(row, at)
    return json_response(key_json(row))


LATEST = 253402300799
"""9999-12-31T23:59:59Z: the largest time accepted (and one both databases store)."""
INTERVAL_MAX = 366 * 86400


def _time(request: web.Request, param: str) -> int | None:
    raw = request.query.get(param)
    if raw is None or raw == "":
        return None
    bad = bad_request(
        f"{param}: expected ISO-8601 (2026-12-04T10:00:00Z) or unix seconds up to year 9999, "
        f"got {raw!r}",
        param=param,
    )
    try:
        seconds = int(float(raw))
    except (ValueError, OverflowError):  # not a number, or inf / nan
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise bad from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        seconds = int(t.timestamp())
    if not 0 <= seconds <= LATEST:
        raise bad
    return seconds


@routes.get("/api/usage")
async def usage(request: web.Request) -> web.Response:
    """Spending per key and model over ``since``..``until`` (all time by default); with
    ``interval`` (seconds, a multiple of 60) one row per key, model and interval."""
    require_admin(request)
    q = request.query
    ring = request.app[KEYS]
    key_id = None
    if q.get("key"):
        found = ring.find(q["key"])
        if found is None and q["key"] not in ("static", ""):
            raise not_found(f"key: no API key with id or name {q['key']!r}", code="unknown_key")
        key_id = found.id if found is not None else q["key"]
    model = None
    if q.get("model"):
        try:
            model = normalize(q["model"])
        except InvalidModelName:
            raise bad_request(f"model: invalid model name {q['model']!r}", param="model") from None
    since = _time(request, "since") or 0
    until = _time(request, "until")
    interval = 0
    if q.get("interval"):
        raw = q["interval"]
        if not raw.isdigit() or not 60 <= int(raw) <= INTERVAL_MAX or int(raw) % 60:
            raise bad_request(
                f"interval: expected seconds, a multiple of 60 up to {INTERVAL_MAX}, got {raw!r}",
                param="interval",
            )
        interval = int(raw)
    accounts = request.app[ACCOUNTS]
    await accounts.sync()  # what was counted here in the last seconds is included
    # The rows are per minute: a range starts at the minute ``since`` falls in.
    rows = await accounts.store.query_usage(key_id, model, since // 60 * 60, until, interval)
    out = []
    for r in rows:
        item: dict[str, Any] = {
            "key_id": r.key_id,
            "key_name": ring.name_of(r.key_id),
            "model": r.model,
            "requests": r.requests,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
        }
        if interval:
            item["time"] = _iso(r.bucket)
        out.append(item)
    return json_response({"usage": out})
