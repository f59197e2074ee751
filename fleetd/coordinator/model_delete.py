"""``DELETE /api/delete`` (Ollama's shape, admin token): remove a model from every agent that
has it, with one ``delete`` task per agent, followed like a download.

A model the fleet must hold (supported, or placed by a rule) is refused with 409: the
automatic distribution would only download it again. A download of the model still under
way on an agent is cancelled first; an offline agent's task waits for it to come back.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from fleetd.coordinator.auth import require_admin
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.inventory import INVENTORY
from fleetd.coordinator.model_sets import MODEL_SETS
from fleetd.coordinator.registry import REGISTRY
from fleetd.core.errors import ApiError
from fleetd.core.http import json_response, read_json, request_model
from fleetd.core.wire import Task

routes = web.RouteTableDef()


class DeleteRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the older spelling of ``model``


@routes.delete("/api/delete")
async def delete_model(request: web.Request) -> web.Response:
    require_admin(request)
    req = await read_json(request, DeleteRequest, model_first=True)
    model = request_model(req.model or req.name)
    if request.app[MODEL_SETS].is_wanted(model):
        raise ApiError(
            409,
            "model_supported",
            f"{model} is supported or placed: take it off the supported list "
            "(PUT /api/supported-models) or the placement rules first",
        )
    dist = request.app[DISTRIBUTION]
    registry = request.app[REGISTRY]
    holders = [
        a for agent_id in request.app[INVENTORY].agents_with(model) if (a := registry.get(agent_id))
    ]
    downloading = list(dist.active_for(model).values())
    if not holders and not downloading:
        # Ollama's own words for a model it does not have.
        raise ApiError(404, "model_not_found", f"model '{model}' not found on any agent")
    tasks: list[Task] = []
    for t in downloading:
        if t.kind == "delete":
            tasks.append(t)  # already being deleted there: followed, not ordered twice
            holders = [a for a in holders if a.id != t.agent_id]
        else:
            dist.cancel(t)
    new = [dist.create(a, model, kind="delete") for a in holders]
    if new:
        await dist.launch(new)
    return json_response({"tasks": tasks + new})
