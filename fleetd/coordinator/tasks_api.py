"""Routes of model distribution: distributions, tasks, the agents × models matrix, an agent's
installed models, and the progress reports agents send."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar, get_args

import msgspec
from aiohttp import web

from fleetd.coordinator.auth import require_admin, require_agent
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.gateway import GATEWAY
from fleetd.coordinator.inventory import INVENTORY
from fleetd.coordinator.model_check import check_registry
from fleetd.coordinator.orders import AgentUnreachable
from fleetd.coordinator.planning import IF_INSTALLED, IF_OFFLINE, Plan, matrix, plan
from fleetd.coordinator.registry import REGISTRY
from fleetd.core.errors import ApiError, bad_request, not_found
from fleetd.core.http import json_response, read_json
from fleetd.core.names import InvalidModelName, normalize
from fleetd.core.wire import TERMINAL, Agent, ProgressReply, ProgressReport, Task, TaskStatus

routes = web.RouteTableDef()

C = TypeVar("C", bound=str)


class DistributionRequest(msgspec.Struct, kw_only=True):
    model: str
    agents: str | list[str]
    if_installed: str = "warn"
    if_offline: str = "fail"


def _model(name: str, param: str = "model") -> str:
    try:
        return normalize(name)
    except InvalidModelName:
        raise bad_request(f"{param}: invalid model name {name!r}", param=param) from None


def _choice(value: str, choices: tuple[C, ...], param: str) -> C:
    for choice in choices:
        if value == choice:
            return choice
    raise bad_request(f"{param}: expected one of {', '.join(choices)}, got {value!r}", param=param)


def _targets(request: web.Request, agents: str | list[str]) -> list[Agent]:
    registry = request.app[REGISTRY]
    if isinstance(agents, str):
        if agents != "all":
            raise bad_request(
                f'agents: expected "all" or a list of agent ids, got {agents!r}', param="agents"
            )
        online = registry.online()
        if not online:
            raise ApiError(409, "no_agents", "no agent is online to distribute to")
        return online
    if not agents:
        raise bad_request('agents: the list is empty; name at least one agent id, or "all"')
    ids = list(dict.fromkeys(agents))
    unknown = [i for i in ids if registry.get(i) is None]
    if unknown:
        raise ApiError(404, "unknown_agent", f"agents: no agent with id {', '.join(unknown)}")
    return [a for i in ids if (a := registry.get(i)) is not None]


@routes.post("/api/distributions")
async def create_distribution(request: web.Request) -> web.Response:
    """Order a model onto one agent, a list, or every online agent (orders go out at once)."""
    require_admin(request)
    req = await read_json(request, DistributionRequest, model_first=True)
    model = _model(req.model)
    if_installed = _choice(req.if_installed, IF_INSTALLED, "if_installed")
    if_offline = _choice(req.if_offline, IF_OFFLINE, "if_offline")
    targets = _targets(request, req.agents)
    dist, inventory = request.app[DISTRIBUTION], request.app[INVENTORY]

    def planned() -> Plan:
        return plan(
            model,
            targets,
            active=dist.active_for(model),
            holders=inventory.agents_with(model),
            if_installed=if_installed,
            if_offline=if_offline,
        )

    warning = await check_registry(request.app, model) if planned().wanted else None
    # Planned again after the check's await; none from here until the tasks exist.
    p = planned()
    warnings = ([warning] if warning is not None else []) + p.warnings
    errors = p.errors
    new = [dist.create(a, model, redownload=p.redownload) for a in p.create]
    by_agent = {t.agent_id: t for t in p.under_way + new}
    tasks = [t for a in targets if (t := by_agent.get(a.id)) is not None]
    if any(t.redownload for t in new) and not request.app[GATEWAY].can_serve(model):
        # The new tasks already took the model out of their agents' pools.
        warnings.append(
            {
                "code": "no_agent_left",
                "message": f"after this order no agent can serve {model} until a re-download "
                f"completes: requests for {model} wait in the gate (at most queue_timeout_s)",
            }
        )
    if new:
        await dist.launch(new)
    body: dict[str, Any] = {"tasks": tasks, "warnings": warnings, "errors": errors}
    if errors and not tasks:
        first = errors[0]
        body["error"] = {"code": first["code"], "message": first["message"]}
        return json_response(body, status=409)
    return json_response(body)


def _task_or_404(request: web.Request) -> Task:
    task_id = request.match_info["id"]
    t = request.app[DISTRIBUTION].tasks.get(task_id)
    if t is None:
        raise not_found(f"no task with id {task_id!r}", code="unknown_task")
    return t


@routes.get("/api/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    require_admin(request)
    q = request.query
    agent, status, model = q.get("agent"), q.get("status"), q.get("model")
    if status is not None:
        _choice(status, get_args(TaskStatus), "status")
    if model is not None:
        model = _model(model)
    tasks = [
        t
        for t in request.app[DISTRIBUTION].tasks.values()
        if (agent is None or t.agent_id == agent)
        and (status is None or t.status == status)
        and (model is None or t.model == model)
    ]
    tasks.sort(key=lambda t: t.created_at)
    return json_response({"tasks": tasks})


@routes.get("/api/tasks/{id}")
async def get_task(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(_task_or_404(request))


@routes.post("/api/tasks/{id}/retry")
async def retry_task(request: web.Request) -> web.Response:
    require_admin(request)
    t = _task_or_404(request)
    if t.status not in ("failed", "cancelled"):
        raise ApiError(
            409,
            "not_retryable",
            f"task {t.id} is {t.status}; only a failed or cancelled task can be retried",
        )
    dist = request.app[DISTRIBUTION]
    dist.retry(t)
    await dist.launch([t])
    return json_response(t)


@routes.post("/api/tasks/{id}/cancel")
async def cancel_task(request: web.Request) -> web.Response:
    require_admin(request)
    t = _task_or_404(request)
    if t.status in TERMINAL:
        raise ApiError(409, "not_cancellable", f"task {t.id} is already {t.status}")
    request.app[DISTRIBUTION].cancel(t)
    return json_response(t)


@routes.get("/api/models/matrix")
async def models_matrix(request: web.Request) -> web.Response:
    """Agents × models; the supported models first, then any other one an agent has or gets."""
    require_admin(request)
    inventory = request.app[INVENTORY]
    agents = list(request.app[REGISTRY].agents.values())
    names, rows = matrix(
        agents,
        request.app[DISTRIBUTION].supported,
        request.app[DISTRIBUTION].tasks.values(),
        {a.id: inventory.models(a.id).keys() for a in agents},
    )
    return json_response({"models": names, "agents": rows})


@routes.get("/api/agents/{id}/models")
async def agent_models(request: web.Request) -> web.Response:
    """From the agent when it answers in time, else as last known, saying which and when."""
    require_admin(request)
    agent_id = request.match_info["id"]
    agent = request.app[REGISTRY].get(agent_id)
    if agent is None:
        raise not_found(f"no agent with id {agent_id!r}", code="unknown_agent")
    dist = request.app[DISTRIBUTION]
    source, reason = "cache", ""
    if agent.status == "online":
        try:
            await dist.fetch_models(agent)
            source = "agent"
        except AgentUnreachable as e:
            reason = str(e)
    else:
        reason = f"agent {agent.name} is offline"
    inventory = request.app[INVENTORY]
    as_of: datetime | None = inventory.as_of(agent_id)
    models = sorted(inventory.models(agent_id).values(), key=lambda m: m.name)
    body: dict[str, Any] = {"models": models, "source": source, "as_of": as_of}
    if reason:
        body["stale_reason"] = reason
    return json_response(body)


@routes.post("/api/agents/{id}/progress")
async def agent_progress(request: web.Request) -> web.Response:
    """An agent's task updates (at least once a second while it downloads)."""
    require_agent(request)
    report = await read_json(request, ProgressReport)
    for i, u in enumerate(report.tasks):
        # Checked for the whole report before any of it is applied.
        if u.total_bytes and u.completed_bytes > u.total_bytes:
            raise bad_request(
                f"tasks[{i}].completed_bytes: {u.completed_bytes} is more than total_bytes "
                f"{u.total_bytes}",
                code="bad_progress",
            )
    agent_id = request.match_info["id"]
    registry = request.app[REGISTRY]
    if registry.get(agent_id) is None:
        raise not_found(f"no agent with id {agent_id!r}; register again", code="unknown_agent")
    registry.touch(agent_id)
    dist = request.app[DISTRIBUTION]
    if report.models is not None:
        request.app[INVENTORY].report(agent_id, report.models)
    await dist.catch_up(report)
    return json_response(ProgressReply(cancel=dist.ingest(agent_id, report)))
