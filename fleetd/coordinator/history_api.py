"""``GET /api/history``: the fleet's or one agent's recent series, for the charts."""

from __future__ import annotations

import math

from aiohttp import web

from fleetd.coordinator.auth import require_admin
from fleetd.coordinator.history import HISTORY
from fleetd.coordinator.registry import REGISTRY
from fleetd.core.errors import bad_request, not_found
from fleetd.core.http import json_response

routes = web.RouteTableDef()


def _since(request: web.Request) -> float | None:
    raw = request.query.get("since")
    if raw is None or raw == "":
        return None
    try:
        since = float(raw)
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        raise bad_request(f"since: expected unix seconds, got {raw[:40]!r}", param="since")
    return since


@routes.get("/api/history")
async def history(request: web.Request) -> web.Response:
    require_admin(request)
    since = _since(request)
    h = request.app[HISTORY]
    agent_id = request.query.get("agent")
    if not agent_id:
        return json_response(h.read(None, since))
    a = request.app[REGISTRY].get(agent_id)
    if a is None:
        raise not_found(f"agent: no agent with id {agent_id[:80]!r}", code="unknown_agent")
    body = h.read(agent_id, since)
    body["agent"] = {"id": a.id, "name": a.name, "status": a.status}
    body["gpu_memory_bytes"] = sum(g.memory_bytes for g in a.gpus)
    body["tracked"] = h.tracked(agent_id)
    return json_response(body)
