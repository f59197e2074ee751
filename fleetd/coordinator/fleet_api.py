"""An operator's day-to-day routes: drain, undrain and remove an agent, clear finished tasks,
and the supported list at runtime (``/api/supported-models``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from fleetd.coordinator.agents_api import agent_or_404
from fleetd.coordinator.auth import require_admin
from fleetd.coordinator.catalog_api import CATALOG, repo_name
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.gateway import GATEWAY
from fleetd.coordinator.model_sets import MODEL_SETS, InvalidModelList, check_list
from fleetd.coordinator.registry import REGISTRY
from fleetd.coordinator.vram import MODEL_SIZES, fitting
from fleetd.core.errors import ApiError, bad_request
from fleetd.core.events import EVENTS
from fleetd.core.http import json_response, read_json
from fleetd.core.wire import TERMINAL

routes = web.RouteTableDef()


@routes.post("/api/agents/{id}/drain")
async def drain(request: web.Request) -> web.Response:
    require_admin(request)
    a = agent_or_404(request)
    await request.app[REGISTRY].set_draining(a, True)
    return json_response(a)


@routes.post("/api/agents/{id}/undrain")
async def undrain(request: web.Request) -> web.Response:
    require_admin(request)
    a = agent_or_404(request)
    await request.app[REGISTRY].set_draining(a, False)
    await request.app[DISTRIBUTION].sync(a.id, ask=False)  # what it missed meanwhile
    return json_response(a)


@routes.delete("/api/agents/{id}")
async def remove_agent(request: web.Request) -> web.Response:
    require_admin(request)
    a = agent_or_404(request)
    force = request.query.get("force", "false")
    if force not in ("true", "false", "1", "0"):
        raise bad_request(f"force: expected true or false, got {force!r}", param="force")
    if a.status == "online" and force not in ("true", "1"):
        raise ApiError(
            409,
            "agent_online",
            f"agent {a.name} ({a.id}) is online; stop it first, or send ?force=true "
            "(it registers anew if it keeps running)",
        )
    await request.app[REGISTRY].forget(a)
    return json_response({"removed": a.id})


@routes.delete("/api/tasks/{id}")
async def remove_task(request: web.Request) -> web.Response:
    require_admin(request)
    task_id = request.match_info["id"]
    dist = request.app[DISTRIBUTION]
    t = dist.tasks.get(task_id)
    if t is None:
        raise ApiError(404, "unknown_task", f"no task with id {task_id!r}")
    if t.status not in TERMINAL:
        raise ApiError(
            409, "task_running", f"task {t.id} is {t.status}; cancel it first, then remove it"
        )
    await dist.remove([t])
    return json_response({"removed": [t.id]})


@routes.delete("/api/tasks")
async def remove_tasks(request: web.Request) -> web.Response:
    """Every finished task, or those of one finished ``status`` (a running status: 409)."""
    require_admin(request)
    status = request.query.get("status")
    if status is not None and status not in TERMINAL:
        if status in ("queued", "downloading", "waiting"):
            raise ApiError(
                409,
                "task_running",
                f"status: {status} tasks are not finished; cancel them first",
            )
        raise bad_request(
            f"status: expected one of {', '.join(sorted(TERMINAL))}, got {status!r}",
            param="status",
        )
    dist = request.app[DISTRIBUTION]
    gone = [
        t
        for t in dist.tasks.values()
        if t.status in TERMINAL and (status is None or t.status == status)
    ]
    await dist.remove(gone)
    return json_response({"removed": [t.id for t in gone]})


class SupportedList(msgspec.Struct):
    models: list[str]


def _supported_body(request: web.Request) -> dict[str, Any]:
    sets = request.app[MODEL_SETS]
    return {
        "models": sets.supported,
        "placement": [{"match": r.match, "models": r.models} for r in sets.rules],
    }


@routes.get("/api/supported-models")
async def get_supported(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(_supported_body(request))


@routes.put("/api/supported-models")
async def put_supported(request: web.Request) -> web.Response:
    """Checked whole before anything changes: one bad name leaves the list as it was."""
    require_admin(request)
    body = await read_json(request, SupportedList)
    try:
        models = check_list(body.models)
    except InvalidModelList as e:
        raise bad_request(str(e), param="models") from None
    await request.app[MODEL_SETS].set_supported(models)
    return json_response(_supported_body(request))


async def follow_model_sets(app: web.Application) -> AsyncIterator[None]:
    """After the distribution's, gateway's and catalog's entries: a changed supported list
    reaches each of them, and the dashboards."""
    sets, sizes, pools = app[MODEL_SETS], app[MODEL_SIZES], app[GATEWAY].pools
    pools.holds = lambda a: fitting(a, sets.for_agent(a), sizes)
    registry = app[REGISTRY]

    def replace() -> None:
        """What each agent serves, worked out again (the list, or a model's size, changed)."""
        pools.set_supported(sets.everything(), registry.agents.values())

    def apply() -> None:
        replace()
        catalog = app[CATALOG]
        catalog.supported = list(sets.supported)
        catalog.supported_repos = {repo_name(m) for m in sets.supported}
        app[DISTRIBUTION].supported = sets.everything()

    def changed(local: bool) -> None:
        apply()
        if local:  # a change made through another coordinator is ordered by that one
            app[DISTRIBUTION].resync()
        app[EVENTS].publish("supported", {"models": sets.supported})

    apply()  # the stored list may differ from the config's the others started with
    sets.on_change.append(changed)
    sizes.on_learned.append(replace)
    yield
    sizes.on_learned.remove(replace)
    sets.on_change.remove(changed)
