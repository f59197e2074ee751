"""The agent's own API under ``/fleetd`` (agent token): status for the coordinator and admins."""

from __future__ import annotations

from aiohttp import web

from fleetd import __version__
from fleetd.agent.readiness import READINESS
from fleetd.agent.runtime import IDENTITY, IN_FLIGHT, SUPPORTED
from fleetd.core.background import dead_loops
from fleetd.core.http import json_response, require_token
from fleetd.core.wire import AGENT_PREFIX

routes = web.RouteTableDef()


def require_coordinator(request: web.Request) -> None:
    require_token(request, request.app[IDENTITY].agent_token, "agent token")


@routes.get(AGENT_PREFIX + "/status")
async def agent_status(request: web.Request) -> web.Response:
    require_coordinator(request)
    identity, r = request.app[IDENTITY], request.app[READINESS]
    supported = request.app[SUPPORTED].models
    return json_response(
        {
            "agent_id": identity.agent_id,
            "instance_id": identity.instance_id,
            "name": identity.name,
            "version": __version__,
            "initializing": r.initializing,
            "ready_models": r.ready(),
            "total_models": len(supported),
            "supported_models": supported,
            "downloaded": sorted(r.downloaded()),
            "loaded": sorted(r.loaded()),
            "status_message": r.message,
            "requests_in_flight": request.app[IN_FLIGHT].count,
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    dead = dead_loops()
    if dead:
        return json_response({"status": "degraded", "loops": dead}, status=503)
    return json_response({"status": "ok"})
