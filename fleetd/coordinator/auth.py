"""Who may call what on the coordinator: admin token (or dashboard session), agent token."""

from __future__ import annotations

import hashlib
import hmac

import msgspec
from aiohttp import web

from fleetd.coordinator.keys import KEYS, OPEN, STATIC, digest
from fleetd.core import throttle
from fleetd.core.errors import ApiError
from fleetd.core.http import check_token, require_token, same_secret
from fleetd.core.keystore import KeyRow


class Tokens(msgspec.Struct):
    """Read at each request: the admin and agent tokens are filled in at start and, with
    PostgreSQL, replaced when another coordinator changes them (coordinator/token_sync.py)."""

    admin: str
    agent: str
    api_keys: tuple[str, ...] = ()


TOKENS = web.AppKey("tokens", Tokens)

SESSION_COOKIE = "fleetd_session"


def session_value(tokens: Tokens) -> str:
    """The cookie proves knowledge of the admin token without storing the token itself."""
    return hmac.new(tokens.admin.encode(), b"fleetd-dashboard-session", hashlib.sha256).hexdigest()


def is_admin(request: web.Request) -> bool:
    tokens = request.app[TOKENS]
    if check_token(request, tokens.admin):
        return True
    cookie = request.cookies.get(SESSION_COOKIE)
    return cookie is not None and same_secret(cookie, session_value(tokens))


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def require_admin(request: web.Request) -> None:
    throttle.guard(request)
    if not is_admin(request):
        secret = _bearer(request)
        if secret and (secret in request.app[TOKENS].api_keys or request.app[KEYS].is_key(secret)):
            raise ApiError(
                403,
                "api_key_not_admin",
                "an API key cannot call the admin API; send the admin token",
            )
        require_token(request, request.app[TOKENS].admin, "admin token")


def require_agent(request: web.Request) -> None:
    require_token(request, request.app[TOKENS].agent, "agent token")


def require_api_key(request: web.Request) -> KeyRow:
    """``/v1`` and native inference: the caller's key (``OPEN`` while there is no static
    and no managed key, not even a revoked one; ``STATIC`` for one of FLEETD_API_KEYS)."""
    static = request.app[TOKENS].api_keys
    ring = request.app[KEYS]
    if not static and not ring.exist:
        return OPEN
    throttle.guard(request)
    for key in static:
        if check_token(request, key):
            return STATIC
    secret = _bearer(request)
    if secret:
        h = digest(secret)
        found = ring.by_hash.get(h)
        if found is not None:
            return found
        if h in ring.revoked:
            raise ApiError(
                401,
                "api_key_revoked",
                "this API key was revoked; ask the fleet's operator for a new one",
                headers={"WWW-Authenticate": "Bearer"},
            )
    if request.headers.get("Authorization"):
        throttle.failed(request, "API key")
    raise ApiError(
        401,
        "invalid_api_key",
        "missing or wrong API key (send Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )
