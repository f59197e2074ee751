"""The simulator's own control API under ``/_sim`` (a prefix real Ollama never serves), so
tests can break and inspect a running sim process. Bodies and answers are JSON.

``GET /_sim/state``
    installed, loaded, partials (bytes on disk per model not installed), active_pulls,
    counters per model (pulls, downloads, bytes_downloaded, loads, requests), disk, vram,
    waiting, down, settings, faults.
``POST /_sim/settings`` ``{"bandwidth_bps", "disk_bytes", "vram_bytes", "max_loaded_models",
    "latency_ms", "token_delay_ms", "load_ms"}`` — any subset; sizes may be strings
    ("50MB"). Answers the settings now in force.
``POST /_sim/faults`` ``{"model", "kind": "fail"|"interrupt"|"stall", "at", "message", "times"}``
    arms a pull fault (see options.Fault); ``DELETE /_sim/faults`` disarms all. Both
    answer ``{"faults": [...]}``.
``POST /_sim/down`` — the server "dies": requests in flight are cut, downloads stop
    (partials stay), VRAM empties, and every new non-/_sim request has its connection
    closed.
    ``POST /_sim/up`` brings it back. Both answer ``{"down": bool}``.
``GET``/``POST /_sim/registry`` — the simulated registry's knobs (``registry.py``): how a
    blob GET redirects, Range ignored, corrupt digests, CDN speed; ``served_bytes`` counts
    the blob bytes it sent.
``POST /_sim/evict`` ``{"model"}`` — unload now, silently, as VRAM pressure would.
    Answers ``{"evicted": bool}``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from fleetd.sim import gotime
from fleetd.sim.context import SIM, Sim, decode, reply
from fleetd.sim.options import Fault, parse_bytes
from fleetd.sim.scheduler import SimError

routes = web.RouteTableDef()


class SettingsPatch(msgspec.Struct, forbid_unknown_fields=True):
    bandwidth_bps: float | str | None = None
    disk_bytes: float | str | None = None
    vram_bytes: float | str | None = None
    max_loaded_models: int | None = None
    latency_ms: float | None = None
    token_delay_ms: float | None = None
    load_ms: float | None = None


class EvictRequest(msgspec.Struct):
    model: str = ""


def _settings(sim: Sim) -> dict[str, Any]:
    return msgspec.structs.asdict(sim.knobs)


@routes.get("/_sim/state")
async def get_state(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    store, scheduler, stats = sim.store, sim.scheduler, sim.stats
    return reply(
        {
            "installed": [
                {
                    "name": name,
                    "size": m.spec.size,
                    "digest": m.spec.digest,
                    "modified_at": gotime.format_ns(m.modified_ns),
                }
                for name, m in store.installed.items()
            ],
            "loaded": [
                {
                    "name": r.name,
                    "size": r.spec.size,
                    "expires_at": gotime.format_ns(r.expires_at_ns()),
                    "keep_alive_s": r.keep_alive_s,
                    "busy": r.refs > 0,
                }
                for r in scheduler.loaded.values()
            ],
            "partials": store.partials(),
            "active_pulls": {
                name: {
                    "completed": store.have(dl.spec),
                    "total": dl.spec.size,
                    "clients": dl.clients,
                }
                for name, dl in sim.puller.active.items()
            },
            "pulls": stats.pulls,
            "downloads": stats.downloads,
            "bytes_downloaded": stats.bytes_downloaded,
            "loads": stats.loads,
            "requests": stats.requests,
            "disk": {"used": store.used, "capacity": sim.knobs.disk_bytes},
            "vram": {"used": scheduler.vram_used, "capacity": sim.knobs.vram_bytes},
            "waiting": scheduler.waiting,
        }
        | _settings(sim)
    )


def _size(value: float | str, key: str) -> int:
    try:
        n = parse_bytes(value) if isinstance(value, str) else value
    except ValueError as exc:
        raise SimError(400, f"{key}: {exc}") from None
    if n < 0:
        raise SimError(400, f"{key}: expected a size >= 0, got {value}")
    return int(n)


@routes.post("/_sim/settings")
async def change_settings(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    patch = await decode(request, SettingsPatch)
    knobs = sim.knobs
    for key in ("latency_ms", "token_delay_ms", "load_ms"):
        if (value := getattr(patch, key)) is not None and value < 0:
            raise SimError(400, f"{key}: expected a number >= 0, got {value}")
    if patch.max_loaded_models is not None and patch.max_loaded_models < 1:
        raise SimError(400, f"max_loaded_models: expected >= 1, got {patch.max_loaded_models}")
    if patch.bandwidth_bps is not None:
        knobs.bandwidth_bps = _size(patch.bandwidth_bps, "bandwidth_bps")
    if patch.disk_bytes is not None:
        knobs.disk_bytes = _size(patch.disk_bytes, "disk_bytes")
    if patch.vram_bytes is not None:
        knobs.vram_bytes = _size(patch.vram_bytes, "vram_bytes")
    for key in ("max_loaded_models", "latency_ms", "token_delay_ms", "load_ms"):
        if (value := getattr(patch, key)) is not None:
            setattr(knobs, key, value)
    return reply(_settings(sim))


@routes.post("/_sim/faults")
async def arm_fault(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    fault = await decode(request, Fault)
    problem = fault.problem()
    if problem is not None:
        raise SimError(400, problem)
    sim.knobs.faults.append(msgspec.structs.replace(fault, model=sim.resolve(fault.model)))
    return reply({"faults": sim.knobs.faults})


@routes.delete("/_sim/faults")
async def clear_faults(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    sim.knobs.faults.clear()
    return reply({"faults": sim.knobs.faults})


@routes.post("/_sim/down")
async def go_down(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    sim.knobs.down = True
    sim.cut_connections()
    await sim.puller.stop()
    for name in list(sim.scheduler.loaded):
        sim.scheduler.unload(name, "server down")
    return reply({"down": True})


@routes.post("/_sim/up")
async def go_up(request: web.Request) -> web.Response:
    request.app[SIM].knobs.down = False
    return reply({"down": False})


@routes.post("/_sim/evict")
async def evict_model(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    req = await decode(request, EvictRequest)
    return reply({"evicted": sim.scheduler.unload(sim.resolve(req.model), "evicted via /_sim")})
