"""Routes of model distribution: distributions, tasks, the agents × models matrix, an agent's
installed models, and the progress reports agents send."""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

import msgspec
from aiohttp import web

from fleetd.coordinator.auth import require_admin, require_agent
from fleetd.coordinator.distribution import DISTRIBUTION, AgentUnreachable, MatrixState
from fleetd.coordinator.gateway import GATEWAY
from fleetd.coordinator.model_check import check_registry
from fleetd.coordinator.registry import REGISTRY
from fleetd.core.errors import ApiError, bad_request, not_found
from fleetd.core.http import json_response, read_json
from fleetd.core.names import InvalidModelName, normalize
from fleetd.core.wire import TERMINAL, Agent, ProgressReply, ProgressReport, Task, TaskStatus

routes = web.RouteTableDef()

IF_INSTALLED = ("warn", "skip", "redownload")
IF_OFFLINE = ("fail", "retry-when-online")


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


def _choice(value: str, choices: tuple[str, ...], param: str) -> str:
    if value not in choices:
        raise bad_request(
            f"{param}: expected one of {', '.join(choices)}, got {value!r}", param=param
        )
    return value


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
    dist = request.app[DISTRIBUTION]
    tasks: list[Task] = []
    new: list[Task] = []
    warnings: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    if any(
        dist.active_task(a.id, model) is None
        and (if_installed == "redownload" or not dist.is_installed(a.id, model))
        for a in targets
    ):
        # Before any task exists, and with no await between the decisions below and create().
        if (warning := await check_registry(request.app, model)) is not None:
            warnings.append(warning)
    for agent in targets:
        active = dist.active_task(agent.id, model)
        if active is not None:
            tasks.append(active)
            warnings.append(
                {
                    "agent_id": agent.id,
                    "code": "already_in_progress",
                    "task_id": active.id,
                    "message": f"{model} is already {active.status} on agent {agent.name}",
                }
            )
            continue
        if dist.is_installed(agent.id, model) and if_installed != "redownload":
            if if_installed == "warn":
                warnings.append(
                    {
                        "agent_id": agent.id,
                        "code": "already_installed",
                        "message": f"{model} is already installed on agent {agent.name}; "
                        'send if_installed "skip" or "redownload" to choose',
                    }
                )
            continue
        if agent.status != "online" and if_offline == "fail":
            errors.append(
                {
                    "agent_id": agent.id,
                    "code": "agent_offline",
                    "message": f"agent {agent.name} ({agent.id}) is offline; send if_offline "
                    '"retry-when-online" to download when it is back',
                }
            )
            continue
        t = dist.create(agent, model, redownload=if_installed == "redownload")
        new.append(t)
        tasks.append(t)
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
    dist = request.app[DISTRIBUTION]
    latest: dict[tuple[str, str], Task] = {}
    for task in sorted(dist.tasks.values(), key=lambda t: t.created_at):
        latest[(task.agent_id, task.model)] = task
    others = {m for models in dist.installed.values() for m in models}
    others |= {model for _, model in latest}
    names = list(dist.supported) + sorted(others - set(dist.supported))
    rows = []
    for a in request.app[REGISTRY].agents.values():
        states: dict[str, MatrixState] = {}
        for m in names:
            t = latest.get((a.id, m))
            state: MatrixState = "missing"
            if t is not None and t.status == "downloading":
                state = "downloading"
            elif t is not None and t.status in ("queued", "waiting"):
                state = "queued"
            elif dist.is_installed(a.id, m):
                state = "installed"
            elif t is not None and t.status == "failed":
                state = "failed"
            states[m] = state
        rows.append({"id": a.id, "name": a.name, "status": a.status, "models": states})
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
    as_of: datetime | None = dist.as_of.get(agent_id)
    models = sorted(dist.installed.get(agent_id, {}).values(), key=lambda m: m.name)
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
        await dist.record_installed(agent_id, report.models)
    return json_response(ProgressReply(cancel=dist.ingest(agent_id, report)))
