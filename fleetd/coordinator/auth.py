"""Who may call what on the coordinator: admin token (or dashboard session), agent token."""

from __future__ import annotations

import hashlib
import hmac

import msgspec
from aiohttp import web

from fleetd.core import throttle
from fleetd.core.errors import ApiError
from fleetd.core.http import check_token, require_token, same_secret


class Tokens(msgspec.Struct, frozen=True):
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


def require_admin(request: web.Request) -> None:
    throttle.guard(request)
    if not is_admin(request):
        require_token(request, request.app[TOKENS].admin, "admin token")


def require_agent(request: web.Request) -> None:
    require_token(request, request.app[TOKENS].agent, "agent token")


def require_api_key(request: web.Request) -> None:
    """``/v1`` and native inference: open unless FLEETD_API_KEYS is set."""
    keys = request.app[TOKENS].api_keys
    if not keys:
        return
    throttle.guard(request)
    for key in keys:
        if check_token(request, key):
            return
    if request.headers.get("Authorization"):
        throttle.failed(request, "API key")
    raise ApiError(
        401,
        "invalid_api_key",
        "missing or wrong API key (send Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )
