"""The agent's own API under ``/fleetd`` (agent token): status for the coordinator and admins."""

from __future__ import annotations

from aiohttp import web

from fleetd import __version__
from fleetd.agent.runtime import RUNTIME
from fleetd.core.http import json_response, require_token
from fleetd.core.wire import AGENT_PREFIX

routes = web.RouteTableDef()


def require_coordinator(request: web.Request) -> None:
    require_token(request, request.app[RUNTIME].agent_token, "agent token")


@routes.get(AGENT_PREFIX + "/status")
async def agent_status(request: web.Request) -> web.Response:
    require_coordinator(request)
    rt = request.app[RUNTIME]
    return json_response(
        {
            "agent_id": rt.agent_id,
            "instance_id": rt.instance_id,
            "name": rt.name,
            "version": __version__,
            "initializing": rt.initializing,
            "ready_models": rt.readiness.ready(rt.supported_models),
            "total_models": len(rt.supported_models),
            "supported_models": rt.supported_models,
            "downloaded": sorted(rt.readiness.downloaded),
            "loaded": sorted(rt.readiness.loaded),
            "status_message": rt.readiness.message,
            "requests_in_flight": rt.in_flight,
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})
