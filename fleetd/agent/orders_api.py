"""The agent's ``/fleetd/tasks`` and ``/fleetd/models`` routes: orders from the coordinator."""

from __future__ import annotations

from aiohttp import web

from fleetd.agent.download_queue import DOWNLOADS
from fleetd.agent.ollamas import OLLAMAS
from fleetd.agent.status_api import require_coordinator
from fleetd.core.errors import ApiError, bad_request, not_found
from fleetd.core.http import json_response, read_json
from fleetd.core.names import InvalidModelName, normalize
from fleetd.core.ollama import OllamaError
from fleetd.core.wire import AGENT_PREFIX, ModelList, Order

routes = web.RouteTableDef()


@routes.post(AGENT_PREFIX + "/tasks")
async def submit_order(request: web.Request) -> web.Response:
    """Queue a download; a repeated order gets the task's current state (idempotent)."""
    require_coordinator(request)
    order = await read_json(request, Order, model_first=True)
    try:
        order.model = normalize(order.model)
    except InvalidModelName:
        raise bad_request(f"model: invalid model name {order.model!r}", param="model") from None
    if not order.task_id.strip():
        raise bad_request("task_id: must not be empty", param="task_id")
    return json_response(request.app[DOWNLOADS].submit(order))


@routes.get(AGENT_PREFIX + "/tasks")
async def list_orders(request: web.Request) -> web.Response:
    require_coordinator(request)
    dl = request.app[DOWNLOADS]
    return json_response(
        {
            "max_concurrent_downloads": dl.config.max_concurrent_downloads,
            "tasks": [e.update() for e in dl.entries.values()],
        }
    )


@routes.post(AGENT_PREFIX + "/tasks/{id}/cancel")
async def cancel_order(request: web.Request) -> web.Response:
    require_coordinator(request)
    update = request.app[DOWNLOADS].cancel(request.match_info["id"])
    if update is None:
        raise not_found(f"no task with id {request.match_info['id']!r} on this agent")
    return json_response(update)


@routes.get(AGENT_PREFIX + "/models")
async def installed_models(request: web.Request) -> web.Response:
    """What the local Ollama server(s) have installed, straight from ``/api/tags``."""
    require_coordinator(request)
    try:
        models = await request.app[OLLAMAS].installed()
    except OllamaError as e:
        raise ApiError(502, "ollama_unreachable", str(e)) from None
    return json_response(ModelList(models=models))
