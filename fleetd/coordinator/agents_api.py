"""Routes agents call (registration, heartbeat) and admins read (agent list and detail)."""

from __future__ import annotations

from aiohttp import web

from fleetd.coordinator.auth import require_admin, require_agent
from fleetd.coordinator.metrics import METRICS
from fleetd.coordinator.registry import REGISTRY
from fleetd.coordinator.settings import SETTINGS
from fleetd.core.errors import ApiError, not_found
from fleetd.core.http import json_response, read_json
from fleetd.core.wire import Agent, Heartbeat, Registration, RegistrationReply

routes = web.RouteTableDef()


def agent_or_404(request: web.Request) -> Agent:
    agent_id = request.match_info["id"]
    a = request.app[REGISTRY].get(agent_id)
    if a is None:
        raise not_found(f"no agent with id {agent_id!r}", code="unknown_agent")
    return a


@routes.post("/api/agents")
async def register_agent(request: web.Request) -> web.Response:
    require_agent(request)
    reg = await read_json(request, Registration)
    if not reg.gpus:
        raise ApiError(
            403,
            "gpu_required",
            f"agent {reg.name!r} reported no GPU; fleetd agents need at least one GPU",
        )
    if not reg.url.startswith(("http://", "https://")):
        raise ApiError(400, "bad_request", f"url: expected an http(s) URL, got {reg.url!r}")
    if not reg.name.strip():
        raise ApiError(400, "bad_request", "name: must not be empty")
    supported = request.app[SETTINGS].supported_models
    agent = await request.app[REGISTRY].register(reg, total_models=len(supported))
    reply = RegistrationReply(agent=agent, supported_models=supported)
    return json_response(reply, status=200)


@routes.post("/api/agents/{id}/heartbeat")
async def agent_heartbeat(request: web.Request) -> web.Response:
    require_agent(request)
    hb = await read_json(request, Heartbeat)
    agent = request.app[REGISTRY].heartbeat(request.match_info["id"], hb)
    if agent is None:
        raise not_found(
            f"no agent with id {request.match_info['id']!r}; register again", code="unknown_agent"
        )
    request.app[METRICS].heartbeats.inc()
    reply = RegistrationReply(agent=agent, supported_models=request.app[SETTINGS].supported_models)
    return json_response(reply)


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
    return json_response({"status": "ok"})
