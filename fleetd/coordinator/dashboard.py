"""The admin dashboard: its static page and assets, and the session cookie that logs a browser in.

The page itself holds no fleet data: everything it shows comes from admin-only API calls, so
serving it without a session is safe. Files are read from package data once at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from importlib.resources import files

import msgspec
from aiohttp import web

from fleetd.coordinator.auth import SESSION_COOKIE, TOKENS, is_admin, session_value
from fleetd.core import throttle
from fleetd.core.errors import ApiError, bad_request
from fleetd.core.http import json_response, read_json, same_secret

routes = web.RouteTableDef()

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
SESSION_MAX_AGE_S = 30 * 24 * 3600


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    content_type: str
    etag: str


ASSETS = web.AppKey("dashboard_assets", dict[str, Asset])


def _read_assets() -> dict[str, Asset]:
    out: dict[str, Asset] = {}
    for entry in (files("fleetd") / "web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        out[entry.name] = Asset(body, _TYPES[suffix], etag)
    if "index.html" not in out:
        raise RuntimeError("fleetd/web/index.html is missing from the installed package")
    return out


async def load_assets() -> dict[str, Asset]:
    """Reads the dashboard's files from package data (in a thread: it is disk I/O)."""
    return await asyncio.to_thread(_read_assets)


def _asset_response(request: web.Request, asset: Asset) -> web.Response:
    headers = {**_SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)


def _redirect(location: str) -> web.Response:
    return web.Response(
        status=303, headers={**_SECURITY_HEADERS, "Location": location, "Cache-Control": "no-store"}
    )


def _token_matches(request: web.Request, token: str) -> bool:
    throttle.guard(request)
    if same_secret(token, request.app[TOKENS].admin):
        return True
    throttle.failed(request, "dashboard login")
    return False


def _set_session(request: web.Request, resp: web.StreamResponse) -> None:
    resp.set_cookie(
        SESSION_COOKIE,
        session_value(request.app[TOKENS]),
        max_age=SESSION_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


@routes.get("/")
async def serve_dashboard(request: web.Request) -> web.Response:
    """The page; ``?token=<admin token>`` logs in and redirects so the token leaves the URL."""
    token = request.query.get("token")
    if token is not None:
        if not _token_matches(request, token):
            return _redirect("/#bad-token")
        resp = _redirect("/")
        _set_session(request, resp)
        return resp
    return _asset_response(request, request.app[ASSETS]["index.html"])


@routes.get("/static/{name}")
async def serve_static(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None or request.match_info["name"] == "index.html":
        raise ApiError(404, "not_found", f"no dashboard file {request.match_info['name']!r}")
    return _asset_response(request, asset)


class _Login(msgspec.Struct):
    token: str


async def _form(request: web.Request) -> Mapping[str, object]:
    raw_type = request.headers.get("Content-Type", "").lower()
    if request.content_type == "multipart/form-data" and "boundary=" not in raw_type:
        raise bad_request("multipart/form-data without a boundary parameter", code="bad_form")
    try:
        return await request.post()
    except (ValueError, KeyError, AssertionError) as e:
        raise bad_request(
            f"malformed form body: {e or type(e).__name__}", code="bad_form"
        ) from None


@routes.get("/api/session")
async def get_session(request: web.Request) -> web.Response:
    """Whether this browser is logged in; lets the page choose its view without a 401."""
    return json_response({"authenticated": is_admin(request)})


@routes.post("/api/session")
async def create_session(request: web.Request) -> web.Response:
    """Log in with the admin token: JSON ``{"token"}`` (the page) or a plain HTML form post."""
    is_form = request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
    if is_form:
        form = await _form(request)
        value = form.get("token")
        token = value if isinstance(value, str) else ""
    else:
        token = (await read_json(request, _Login)).token
    if not _token_matches(request, token.strip()):
        if is_form:
            return _redirect("/#bad-token")
        raise ApiError(401, "unauthorized", "wrong admin token")
    resp = _redirect("/") if is_form else json_response({"authenticated": True})
    _set_session(request, resp)
    return resp


@routes.delete("/api/session")
async def delete_session(request: web.Request) -> web.Response:
    """Log out: the browser forgets the cookie."""
    resp = json_response({"authenticated": False})
    resp.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
    return resp
