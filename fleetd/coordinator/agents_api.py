"""Routes agents call (registration, heartbeat) and admins read (agent list and detail)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from fleetd.coordinator.auth import require_admin, require_agent
from fleetd.coordinator.inventory import INVENTORY
from fleetd.coordinator.loops import refuse_self
from fleetd.coordinator.model_sets import MODEL_SETS
from fleetd.coordinator.registry import REGISTRY
from fleetd.coordinator.settings import SETTINGS
from fleetd.coordinator.vram import MODEL_SIZES, fitting
from fleetd.core.background import dead_loops
from fleetd.core.errors import ApiError, not_found
from fleetd.core.http import encode, json_response, read_json
from fleetd.core.store import STORE
from fleetd.core.wire import Agent, Heartbeat, Registration

routes = web.RouteTableDef()


class _GpusOnly(msgspec.Struct):
    gpus: Any = None


def _reply(agent: Agent, request: web.Request) -> web.Response:
    """The agent object itself plus ``supported_models`` (what the agent must hold) and
    ``mirror`` (whether its Ollama pulls through this coordinator's registry mirror)."""
    settings = request.app[SETTINGS]
    holds = fitting(agent, request.app[MODEL_SETS].for_agent(agent), request.app[MODEL_SIZES])
    extra = b',"supported_models":' + encode(holds)
    extra += b',"mirror":' + encode(settings.mirror.enabled)
    body = encode(agent)[:-1] + extra + b"}"
    return web.Response(body=body, content_type="application/json")


def agent_or_404(request: web.Request) -> Agent:
    agent_id = request.match_info["id"]
    a = request.app[REGISTRY].get(agent_id)
    if a is None:
        raise not_found(f"no agent with id {agent_id!r}", code="unknown_agent")
    return a


def _check_name(name: str) -> None:
    if not name.strip():
        raise ApiError(400, "bad_request", "name: must not be empty", param="name")
    if not name.isprintable():
        # A newline in a name would forge lines in every log that names the agent.
        raise ApiError(
            400, "bad_request", f"name: control characters are not allowed: {name!r}", param="name"
        )


_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9.-]+:([1-9][0-9]{0,4})(?:/[!-~]*)?")
"""What almost every agent sends (``http://host:port/``): valid when its port is at most
65535, without the cost of ``urlsplit`` (a fifth of a registration's own checks)."""


def _check_url(url: str) -> int:
    """An http(s) URL with a host and a port in 1-65535, nothing unprintable; its port."""
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None and (port := int(plain[1])) <= 65535:
        return port
    why = ""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        why = "invalid port (expected 1-65535)"
    else:
        if parts.scheme not in ("http", "https"):
            why = "expected an http:// or https:// URL"
        elif not parts.hostname:
            why = "the URL has no host"
        elif parts.port == 0:
            why = "port 0 is not a port to connect to (1-65535)"
        elif not url.isprintable() or " " in url:
            why = "spaces and control characters are not allowed"
    if why:
        raise ApiError(400, "bad_request", f"url: {why}, got {url!r}", param="url")
    return port


@routes.post("/api/agents")
async def register_agent(request: web.Request) -> web.Response:
    require_agent(request)
    body = await request.read()
    try:
        reg: Registration | None = msgspec.json.decode(body, type=Registration)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        reg = None  # one decode in the usual case; the slow path below says what is wrong
    if reg is None or not reg.gpus:
        try:
            gpus = msgspec.json.decode(body, type=_GpusOnly).gpus
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            gpus = ...  # not even an object: read_json names the problem below
        if gpus is None or gpus == []:
            # Decided before anything else about the agent is looked at: a host without GPU
            # learns that first, whatever else is wrong with it (docs/api.md, registration).
            raise ApiError(
                403,
                "gpu_required",
                "the agent reported no GPU; fleetd agents need at least one GPU",
            )
        reg = await read_json(request, Registration)
    _check_name(reg.name)
    port = _check_url(reg.url)
    await refuse_self(request, reg.url, port)
    holds = request.app[MODEL_SETS].for_labels(reg.labels)
    agent = await request.app[REGISTRY].register(reg, total_models=len(holds))
    if reg.models is not None:
        # No await since register: the distribution's sync, started by it, sees this list.
        request.app[INVENTORY].report(agent.id, reg.models)
    return _reply(agent, request)


@routes.post("/api/agents/{id}/heartbeat")
async def agent_heartbeat(request: web.Request) -> web.Response:
    require_agent(request)
    hb = await read_json(request, Heartbeat)
    agent = request.app[REGISTRY].heartbeat(request.match_info["id"], hb)
    if agent is None:
        raise not_found(
            f"no agent with id {request.match_info['id']!r}; register again", code="unknown_agent"
        )
    return _reply(agent, request)


@routes.get("/api/agents")
async def list_agents(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response({"agents": list(request.app[REGISTRY].agents.values())})


@routes.get("/api/agents/{id}")
async def get_agent(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(agent_or_404(request))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    fault = await request.app[STORE].check()
    dead = dead_loops()
    if fault is not None or dead:
        body: dict[str, Any] = {"status": "degraded"}
        if fault is not None:
            body["store"] = fault
        if dead:
            body["loops"] = dead
        return json_response(body, status=503)
    return json_response({"status": "ok"})
