"""The agent's inference surface on its single port: OpenAI's ``/v1`` and Ollama's native API,
routed to the local Ollama server(s), so a client can talk to one agent as to Ollama itself.

Residency comes first: Ollama unloads a model when VRAM runs short or when a request's
``keep_alive`` (five minutes by default) runs out, and the first request after that waits for
the load. So a supported model that is
not loaded is loaded here with ``keep_alive: -1`` before the request goes on, and a native
request's own ``keep_alive`` for a supported model is rewritten to -1, so inference traffic
never shortens or ends a supported model's residency. Other models pass untouched. A model
that is not installed is answered by Ollama itself (404 naming it, in the caller's shape):
pulling on demand would bypass the coordinator's distribution and its disk checks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from aiohttp import web

from fleetd.agent.ollamas import OLLAMAS, LocalOllamas, LocalServer
from fleetd.agent.runtime import IN_FLIGHT, SUPPORTED
from fleetd.core import proxy
from fleetd.core.errors import ApiError, not_found
from fleetd.core.http import CLIENT, Head, decode_head, json_response, request_model
from fleetd.core.ollama import OllamaError
from fleetd.core.server import SHUTDOWN_TIMEOUT_S

log = logging.getLogger("fleetd.agent.inference")

routes = web.RouteTableDef()

BUSY_RETRY_AFTER_S = 1
"""Added to Ollama's 503 "server busy", which carries no Retry-After of its own."""
STOPPING = "the agent is shutting down; retry the request in a moment"
STARTING_RETRY_AFTER_S = 5
"""For a supported model still downloading here (the coordinator sends such an agent nothing)."""
_STARTED = int(time.time())


class _NativeHead(Head):
    keep_alive: float | str | msgspec.UnsetType | None = msgspec.UNSET


_head = msgspec.json.Decoder(Head)
_native_head = msgspec.json.Decoder(_NativeHead)


async def _ensure_loaded(ollamas: LocalOllamas, model: str) -> None:
    """Load a supported model for good before its request goes on; a model not downloaded
    here yet is 503 with Retry-After (the coordinator sends such an agent nothing for it)."""
    try:
        await ollamas.ensure_loaded(model)
    except OllamaError as e:
        if e.status == 404:
            raise ApiError(
                503,
                "models_starting",
                f"model {model} is not downloaded on this agent yet; retry later",
                headers={"Retry-After": str(STARTING_RETRY_AFTER_S)},
            ) from None
        raise ApiError(502, "ollama_unavailable", f"cannot load {model}: {e}") from None


def _resident_forever(body: bytes) -> bytes:
    """The body with ``keep_alive: -1``: the only re-encoding on the agent's hot path."""
    obj = msgspec.json.decode(body)
    obj["keep_alive"] = -1
    return msgspec.json.encode(obj)


async def _forward(
    request: web.Request, body: bytes, servers: list[LocalServer]
) -> web.StreamResponse:
    """Send the request to the first server that answers; relay its reply as it streams."""
    in_flight = request.app[IN_FLIGHT]
    if in_flight.stopping:
        raise proxy.shutting_down(STOPPING)
    session = request.app[CLIENT]
    headers = proxy.request_headers(request.headers)
    failure = ""
    flight = proxy.Flight(asyncio.current_task())
    in_flight.took_off(flight)
    try:
        for s in servers[:2]:
            what = f"Ollama {s.url}"
            with s.serving():
                try:
                    upstream = await session.request(
                        request.method,
                        s.url + request.path_qs,
                        data=body,
                        headers=headers,
                        timeout=proxy.TIMEOUT,
                    )
                except proxy.UPSTREAM_ERRORS as e:
                    failure = f"{what} unreachable: {e or type(e).__name__}"
                    continue
                except asyncio.CancelledError:
                    if not flight.aborted:
                        raise
                    proxy.uncancel(flight.task)
                    raise proxy.shutting_down(STOPPING) from None
                flight.upstream = upstream
                extra: tuple[tuple[str, str], ...] = ()
                if upstream.status == 503 and "Retry-After" not in upstream.headers:
                    extra = (("Retry-After", str(BUSY_RETRY_AFTER_S)),)
                outcome = proxy.CLIENT_GONE
                try:
                    resp, outcome = await proxy.relay(request, upstream, what, extra)
                finally:
                    if outcome == proxy.OK:
                        upstream.release()
                    else:
                        upstream.close()
                return resp
    finally:
        in_flight.landed(flight)
    raise ApiError(502, "ollama_unavailable", failure)


async def infer_openai(request: web.Request) -> web.StreamResponse:
    """``/v1/*``: these requests cannot carry keep_alive, so residency is ensured first."""
    body = await request.read()
    head = decode_head(_head, body)
    model = request_model(head.model or head.name)
    ollamas = request.app[OLLAMAS]
    if model in request.app[SUPPORTED]:
        await _ensure_loaded(ollamas, model)
    return await _forward(request, body, ollamas.for_model(model))


async def infer_native(request: web.Request) -> web.StreamResponse:
    """Native inference: as ``/v1``, plus keep_alive -1 for supported models."""
    body = await request.read()
    head = decode_head(_native_head, body)
    model = request_model(head.model or head.name)
    ollamas = request.app[OLLAMAS]
    if model in request.app[SUPPORTED]:
        if head.keep_alive is not msgspec.UNSET and head.keep_alive != -1:
            body = _resident_forever(body)
        await _ensure_loaded(ollamas, model)
    return await _forward(request, body, ollamas.for_model(model))


async def show_model(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    head = decode_head(_head, body)
    model = request_model(head.model or head.name)
    return await _forward(request, body, request.app[OLLAMAS].for_model(model))


for _path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
    routes.post(_path)(infer_openai)
for _path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
    routes.post(_path)(infer_native)
routes.post("/api/show")(show_model)


@routes.get("/api/version")
async def ollama_version(request: web.Request) -> web.StreamResponse:
    return await _forward(request, b"", request.app[OLLAMAS].servers)


class _Listing(msgspec.Struct):
    models: list[dict[str, Any]] | None = None


async def _merged(request: web.Request) -> web.StreamResponse:
    """One server: its reply as is. Several: their lists merged, first server first."""
    servers = request.app[OLLAMAS].servers
    if len(servers) == 1:
        return await _forward(request, b"", servers)
    session = request.app[CLIENT]
    merged: dict[str, dict[str, Any]] = {}
    for s in servers:
        try:
            async with session.get(s.url + request.path, timeout=proxy.TIMEOUT) as r:
                body = await r.read()
            listing = msgspec.json.decode(body, type=_Listing)
        except (*proxy.UPSTREAM_ERRORS, msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("Ollama %s%s: %s", s.url, request.path, e or type(e).__name__)
            continue
        for m in listing.models or []:
            merged.setdefault(str(m.get("name") or m.get("model")), m)
    return json_response({"models": list(merged.values())})


routes.get("/api/tags")(_merged)
routes.get("/api/ps")(_merged)


def _entry(ollamas: LocalOllamas, name: str) -> dict[str, Any]:
    downloaded, loaded = ollamas.is_installed(name), ollamas.is_resident(name)
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "fleetd",
        "downloaded": downloaded,
        "loaded": loaded,
        "ready": downloaded and loaded,
    }


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """Exactly the coordinator's supported list, each with this agent's readiness: a client
    asking one agent sees what the fleet serves and whether this agent can serve it now."""
    ollamas = request.app[OLLAMAS]
    models = request.app[SUPPORTED].models
    return json_response({"object": "list", "data": [_entry(ollamas, m) for m in models]})


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if name not in request.app[SUPPORTED]:
        raise not_found(f"model {name!r} is not a supported model", code="model_not_found")
    return json_response(_entry(request.app[OLLAMAS], name))


async def stop_serving(app: web.Application) -> None:
    """on_shutdown: let requests in flight finish for a while, then end them saying why."""
    await app[IN_FLIGHT].stop(SHUTDOWN_TIMEOUT_S, STOPPING)
