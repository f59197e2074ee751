"""The agent's inference surface on its single port: OpenAI's ``/v1`` and Ollama's native API,
routed to the local Ollama server(s) (spec A1–A3).

Residency comes first (``ollama.md``, "Keeping a model resident"): a supported model that is
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
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from fleetd.agent.runtime import RUNTIME, Runtime
from fleetd.core import proxy
from fleetd.core.background import background
from fleetd.core.errors import ApiError, not_found
from fleetd.core.http import CLIENT, Head, decode_head, json_response, request_model
from fleetd.core.ollama import Ollama, OllamaError
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


class Server:
    """One local Ollama server, with what it has loaded when the agent fronts several."""

    def __init__(self, ollama: Ollama) -> None:
        self.ollama = ollama
        self.url = ollama.url
        self.in_flight = 0
        self.loaded: frozenset[str] = frozenset()


class Upstreams:
    """The local Ollama servers and the per-model load locks (one load at a time per model)."""

    def __init__(self, rt: Runtime, session: aiohttp.ClientSession) -> None:
        self.rt = rt
        self.servers = [Server(Ollama(session, s.url)) for s in rt.config.ollama]
        self._locks: dict[str, asyncio.Lock] = {}
        self.flights: set[proxy.Flight] = set()
        self.stopping = False
        self._idle = asyncio.Event()

    async def stop(self, grace_s: float) -> None:
        """On shutdown: requests in flight get ``grace_s`` to finish, then end with an error
        saying the agent is stopping (not that Ollama failed); new ones get 503."""
        self.stopping = True
        if not self.flights:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return
        except asyncio.TimeoutError:
            pass
        log.warning("ending %d request(s) in flight: the agent is stopping", len(self.flights))
        error = proxy.ShuttingDown(STOPPING)
        for flight in list(self.flights):
            flight.abort(error)

    def landed(self, flight: proxy.Flight) -> None:
        self.flights.discard(flight)
        if self.stopping and not self.flights:
            self._idle.set()

    def for_model(self, model: str) -> list[Server]:
        """Servers to try, best first: those with ``model`` loaded, least busy first."""
        if len(self.servers) == 1:
            return self.servers
        return sorted(self.servers, key=lambda s: (model not in s.loaded, s.in_flight))

    async def refresh(self) -> None:
        """What each server has loaded (only needed to choose among several)."""
        for s in self.servers:
            try:
                s.loaded = frozenset(m.name or m.model for m in await s.ollama.ps())
            except OllamaError as e:
                log.debug("%s", e)
                s.loaded = frozenset()

    async def ensure_loaded(self, model: str) -> None:
        """Load a supported model with ``keep_alive: -1`` unless it is known to be resident."""
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            if model in self.rt.readiness.loaded:
                return
            last: OllamaError | None = None
            for s in self.for_model(model):
                try:
                    await s.ollama.load(model, -1)
                except OllamaError as e:
                    last = e
                    continue
                s.loaded = s.loaded | {model}
                self.rt.readiness.loaded.add(model)
                self.rt.changed.set()
                return
        assert last is not None
        if last.status == 404:
            raise ApiError(
                503,
                "models_starting",
                f"model {model} is not downloaded on this agent yet; retry later",
                headers={"Retry-After": str(STARTING_RETRY_AFTER_S)},
            )
        raise ApiError(502, "ollama_unavailable", f"cannot load {model}: {last}")


UPSTREAMS = web.AppKey("upstreams", Upstreams)


def _resident_forever(body: bytes) -> bytes:
    """The body with ``keep_alive: -1``: the only re-encoding on the agent's hot path."""
    obj = msgspec.json.decode(body)
    obj["keep_alive"] = -1
    return msgspec.json.encode(obj)


async def _forward(request: web.Request, body: bytes, servers: list[Server]) -> web.StreamResponse:
    """Send the request to the first server that answers; relay its reply as it streams."""
    rt = request.app[RUNTIME]
    ups = request.app[UPSTREAMS]
    if ups.stopping:
        raise proxy.shutting_down(STOPPING)
    session = request.app[CLIENT]
    headers = proxy.request_headers(request.headers)
    failure = ""
    rt.in_flight += 1
    flight = proxy.Flight(asyncio.current_task())
    ups.flights.add(flight)
    try:
        for s in servers[:2]:
            what = f"Ollama {s.url}"
            s.in_flight += 1
            try:
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
                s.in_flight -= 1
    finally:
        rt.in_flight -= 1
        ups.landed(flight)
    raise ApiError(502, "ollama_unavailable", failure)


async def infer_openai(request: web.Request) -> web.StreamResponse:
    """``/v1/*``: these requests cannot carry keep_alive, so residency is ensured first."""
    body = await request.read()
    head = decode_head(_head, body)
    model = request_model(head.model or head.name)
    rt = request.app[RUNTIME]
    ups = request.app[UPSTREAMS]
    if model in rt.supported_models and model not in rt.readiness.loaded:
        await ups.ensure_loaded(model)
    return await _forward(request, body, ups.for_model(model))


async def infer_native(request: web.Request) -> web.StreamResponse:
    """Native inference: as ``/v1``, plus keep_alive -1 for supported models."""
    body = await request.read()
    head = decode_head(_native_head, body)
    model = request_model(head.model or head.name)
    rt = request.app[RUNTIME]
    ups = request.app[UPSTREAMS]
    if model in rt.supported_models:
        if head.keep_alive is not msgspec.UNSET and head.keep_alive != -1:
            body = _resident_forever(body)
        if model not in rt.readiness.loaded:
            await ups.ensure_loaded(model)
    return await _forward(request, body, ups.for_model(model))


async def show_model(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    head = decode_head(_head, body)
    model = request_model(head.model or head.name)
    return await _forward(request, body, request.app[UPSTREAMS].for_model(model))


for _path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
    routes.post(_path)(infer_openai)
for _path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
    routes.post(_path)(infer_native)
routes.post("/api/show")(show_model)


@routes.get("/api/version")
async def ollama_version(request: web.Request) -> web.StreamResponse:
    return await _forward(request, b"", request.app[UPSTREAMS].servers)


class _Listing(msgspec.Struct):
    models: list[dict[str, Any]] | None = None


async def _merged(request: web.Request) -> web.StreamResponse:
    """One server: its reply as is. Several: their lists merged, first server first."""
    ups = request.app[UPSTREAMS]
    if len(ups.servers) == 1:
        return await _forward(request, b"", ups.servers)
    session = request.app[CLIENT]
    merged: dict[str, dict[str, Any]] = {}
    for s in ups.servers:
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


def _entry(rt: Runtime, name: str) -> dict[str, Any]:
    r = rt.readiness
    downloaded, loaded = name in r.downloaded, name in r.loaded
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
    """Exactly the coordinator's supported list, each with this agent's readiness (spec A4)."""
    rt = request.app[RUNTIME]
    return json_response({"object": "list", "data": [_entry(rt, m) for m in rt.supported_models]})


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    name = request.match_info["model"]
    if name not in rt.supported_models:
        raise not_found(f"model {name!r} is not a supported model", code="model_not_found")
    return json_response(_entry(rt, name))


async def run_upstreams(app: web.Application) -> AsyncIterator[None]:
    """Upstreams, and with several servers a refresh of what each has loaded."""
    rt = app[RUNTIME]
    ups = app[UPSTREAMS] = Upstreams(rt, app[CLIENT])
    if len(ups.servers) == 1:
        yield
        return

    async def refresh_forever() -> None:
        while True:
            await ups.refresh()
            await asyncio.sleep(rt.config.residency_check_s or rt.config.heartbeat_interval_s)

    async with background(refresh_forever(), "upstreams-refresh"):
        yield


async def stop_serving(app: web.Application) -> None:
    """on_shutdown: let requests in flight finish for a while, then end them saying why."""
    await app[UPSTREAMS].stop(SHUTDOWN_TIMEOUT_S)
