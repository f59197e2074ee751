"""The coordinator's inference surface: OpenAI's ``/v1`` and Ollama's native API over the fleet.

Requests that name a model go through the gateway (balanced, gated, one failover); the
listing paths (``/api/tags``, ``/api/ps``) ask the agents, and ``/v1/models`` is the fixed
supported list. Everything here is guarded by ``FLEETD_API_KEYS`` when set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from fleetd import __version__
from fleetd.coordinator.auth import require_admin, require_api_key
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.gateway import GATEWAY
from fleetd.coordinator.inventory import INVENTORY
from fleetd.coordinator.model_check import check_registry
from fleetd.coordinator.model_sets import MODEL_SETS
from fleetd.coordinator.planning import Plan, plan
from fleetd.coordinator.registry import REGISTRY
from fleetd.coordinator.usage import ACCOUNTS
from fleetd.core.errors import ApiError, not_found
from fleetd.core.http import CLIENT, encode, json_response, read_json, request_model
from fleetd.core.ollama import error_message
from fleetd.core.wire import TERMINAL, Agent, Task

log = logging.getLogger("fleetd.inference")

routes = web.RouteTableDef()

FORWARDED = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
)
"""Paths whose body names a model: balanced over ready agents and gated."""

FANOUT_TIMEOUT = aiohttp.ClientTimeout(total=3, sock_connect=2)
FANOUT_PARALLEL = 32
_STARTED = int(time.time())


async def forward(request: web.Request) -> web.StreamResponse:
    key = require_api_key(request)
    gateway = request.app[GATEWAY]
    body = await request.read()
    model = gateway.model_of(body)
    with request.app[ACCOUNTS].admit(key, model) as meter:
        return meter.done(await gateway.forward(request, body, model, meter))


for _path in FORWARDED:
    routes.post(_path)(forward)


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _STARTED, "owned_by": "fleetd"}


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    allowed = require_api_key(request).models
    models = request.app[MODEL_SETS].everything()
    if allowed is not None:  # a key limited to some models sees those
        models = [m for m in models if m in allowed]
    return json_response({"object": "list", "data": [_model_entry(m) for m in models]})


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    require_api_key(request)
    name = request.match_info["model"]
    if not request.app[MODEL_SETS].is_wanted(name):
        raise not_found(f"model {name!r} is not a supported model", code="model_not_found")
    return json_response(_model_entry(name))


class _Listing(msgspec.Struct):
    models: list[dict[str, Any]] | None = None


async def _ask(
    session: aiohttp.ClientSession, agents: Iterable[Agent], path: str
) -> list[tuple[Agent, list[dict[str, Any]]]]:
    """``GET path`` on each agent, a few at a time; an agent that fails is left out."""
    sem = asyncio.Semaphore(FANOUT_PARALLEL)

    async def one(a: Agent) -> tuple[Agent, list[dict[str, Any]]] | None:
        async with sem:
            try:
                async with session.get(a.url.rstrip("/") + path, timeout=FANOUT_TIMEOUT) as r:
                    body = await r.read()
                    if r.status != 200:
                        log.warning(
                            "agent %s (%s) %s: HTTP %d: %s",
                            a.name,
                            a.id,
                            path,
                            r.status,
                            error_message(body),
                        )
                        return None
                listing = msgspec.json.decode(body, type=_Listing)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                log.warning("agent %s (%s) %s: %s", a.name, a.id, path, e or type(e).__name__)
                return None
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.warning("agent %s (%s) %s: unreadable reply: %s", a.name, a.id, path, e)
                return None
        return a, listing.models or []

    found = await asyncio.gather(*(one(a) for a in agents))
    return [f for f in found if f is not None]


def _ready(request: web.Request) -> list[Agent]:
    return [
        a
        for a in request.app[REGISTRY].agents.values()
        if a.status == "online" and not a.initializing
    ]


@routes.get("/api/tags")
async def list_tags(request: web.Request) -> web.Response:
    """Models available on ready agents, supported ones first, in Ollama's format."""
    require_api_key(request)
    merged: dict[str, dict[str, Any]] = {}
    for _, models in await _ask(request.app[CLIENT], _ready(request), "/api/tags"):
        for m in models:
            name = m.get("name") or m.get("model")
            if isinstance(name, str):
                merged.setdefault(name, m)
    supported = request.app[MODEL_SETS].everything()
    first = [merged.pop(m) for m in supported if m in merged]
    return json_response({"models": first + [merged[n] for n in sorted(merged)]})


@routes.get("/api/ps")
async def list_loaded(request: web.Request) -> web.Response:
    """What is loaded across the fleet; each entry names its agent in an extra ``agent``."""
    require_api_key(request)
    online = [a for a in request.app[REGISTRY].agents.values() if a.status == "online"]
    out: list[dict[str, Any]] = []
    for a, models in await _ask(request.app[CLIENT], online, "/api/ps"):
        for m in models:
            m["agent"] = {"id": a.id, "name": a.name}
            out.append(m)
    return json_response({"models": out})


def _semver(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("-")[0].split("."):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


@routes.get("/api/version")
async def ollama_version(request: web.Request) -> web.Response:
    """The oldest Ollama among ready agents, so clients use no feature some agent lacks."""
    require_api_key(request)
    versions = [v for a in _ready(request) for v in a.ollama_versions if _semver(v)]
    version = min(versions, key=_semver) if versions else "0.0.0"
    return json_response({"version": version, "fleetd": __version__})


class _PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the older spelling of ``model``
    stream: bool = True


PULL_POLL_S = 0.25
"""How often a pull stream looks at its tasks (Ollama sends a line about every 60 ms)."""


async def _follow(
    model: str, tasks: list[Task], done_bytes: int, had: int, warning: dict[str, str] | None
) -> AsyncIterator[dict[str, Any]]:
    """Ollama's pull lines for a fleet distribution: status, then progress summed over the
    agents (the ``had`` agents that already had the model count as done), then success or an
    error. A ``warning`` is one more status line, which Ollama's clients show as is."""
    yield {"status": "pulling manifest"}
    if warning is not None:
        yield {"status": f"warning: {warning['message']}"}
    n = len(tasks)
    last: tuple[int, int] | None = None
    while True:
        total = done_bytes + sum(t.total_bytes for t in tasks)
        completed = done_bytes + sum(
            t.total_bytes if t.status == "completed" else t.completed_bytes for t in tasks
        )
        running = sum(1 for t in tasks if t.status not in TERMINAL)
        if total > 0 and (completed, total) != last:
            last = (completed, total)
            status = f"pulling {model} ({n - running} of {n} agents done"
            status += f"; {had} already had it)" if had else ")"
            line: dict[str, Any] = {
                "status": status if n else f"every online agent ({had}) already has {model}",
                "digest": f"fleet:{model}",
                "total": total,
            }
            if completed:
                line["completed"] = completed
            yield line
        if not running:
            break
        await asyncio.sleep(PULL_POLL_S)
    failed = [t for t in tasks if t.status != "completed"]
    if failed:
        why = "; ".join(f"{t.agent_name} ({t.agent_id}): {t.error or t.status}" for t in failed)
        yield {"error": f"pull of {model} failed on {len(failed)} of {n} agent(s): {why}"}
        return
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


@routes.post("/api/pull")
async def pull_model(request: web.Request) -> web.StreamResponse:
    """A distribution of the model to every online agent, followed in Ollama's pull format.

    Agents that have the model count as done; one already downloading it is followed, not
    ordered twice. A client that disconnects leaves the distribution running (it is the
    fleet's, shown on the dashboard), unlike Ollama, which cancels a pull nobody waits for.
    """
    require_admin(request)
    req = await read_json(request, _PullRequest, model_first=True)
    model = request_model(req.model or req.name)
    online = request.app[REGISTRY].online()
    if not online:
        raise ApiError(409, "no_agents", "no agent is online to pull to")
    dist, inventory = request.app[DISTRIBUTION], request.app[INVENTORY]

    def planned() -> Plan:
        return plan(
            model,
            online,
            active=dist.active_for(model),
            holders=inventory.agents_with(model),
            if_installed="skip",
            if_offline="retry-when-online",  # online when listed: it gets its task back
        )

    warning = await check_registry(request.app, model) if planned().wanted else None
    p = planned()  # again after the check's await; none from here until the tasks exist
    new = [dist.create(a, model) for a in p.create]
    tasks = p.under_way + new
    done_bytes = sum(m.size for a in p.installed if (m := inventory.get(a.id, model)))
    if new:
        await dist.launch(new)
    lines = _follow(model, tasks, done_bytes, len(online) - len(tasks), warning)
    if not req.stream:
        outcome = [line async for line in lines][-1]
        if warning is not None:
            outcome["warnings"] = [warning]
        return json_response(outcome, status=500 if "error" in outcome else 200)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    try:
        async for line in lines:
            await resp.write(encode(line) + b"\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass
    return resp


async def refuse(request: web.Request) -> web.Response:
    op = request.path.rsplit("/", 1)[-1]
    raise ApiError(
        501,
        "not_supported",
        f"the fleetd coordinator does not {op} models (copying, creating and uploading models "
        "are outside fleetd's scope); use /api/pull to distribute a model to the fleet and "
        "DELETE /api/delete to remove one",
    )


for _path in ("/api/copy", "/api/create", "/api/push"):
    routes.route("*", _path)(refuse)
