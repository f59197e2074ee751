"""The one object every simulator handler reaches through ``request.app[SIM]``, and the
small helpers they share: strict body decoding, Ollama-style JSON, NDJSON/SSE streams.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TypeVar

import msgspec
from aiohttp import web

from fleetd.sim import names
from fleetd.sim.fetch import Fetcher
from fleetd.sim.options import SimOptions
from fleetd.sim.scheduler import Scheduler, SimError
from fleetd.sim.state import Installed, Knobs, Puller, Stats, Store

T = TypeVar("T")


class Sim:
    """A simulated Ollama server: its disk, downloads, VRAM, knobs and counters."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.knobs = Knobs(
            bandwidth_bps=options.bandwidth_bps,
            disk_bytes=options.disk_bytes,
            vram_bytes=options.vram_bytes,
            max_loaded_models=options.max_loaded_models,
            latency_ms=options.latency_ms,
            token_delay_ms=options.token_delay_ms,
            load_ms=options.load_ms,
            faults=[
                msgspec.structs.replace(f, model=names.display(f.model)) for f in options.faults
            ],
        )
        self.stats = Stats()
        self.store = Store(options, self.knobs)
        self.puller = Puller(self.store, self.knobs, self.stats, options.chunk_interval_s)
        self.scheduler = Scheduler(self.knobs, self.stats, options.max_queue)
        self.blob_dir = (
            Path(options.state_dir) / "blobs"
            if options.state_dir
            else Path(tempfile.mkdtemp(prefix="sim-ollama-blobs-"))
        )
        self.fetcher = Fetcher(
            self.store, self.knobs, self.stats, self.blob_dir, options.size_scale
        )
        self.in_flight: set[asyncio.Transport] = set()

    def resolve(self, raw: str) -> str:
        """Display name of a requested model; 400 when missing or invalid."""
        if not raw:
            raise SimError(400, "model is required")
        try:
            return self.store.resolve(raw)
        except names.InvalidName:
            raise SimError(400, "invalid model name") from None

    def installed(self, raw: str) -> tuple[str, Installed]:
        """The installed model an inference request names; 404 as Ollama words it."""
        name = self.resolve(raw)
        model = self.store.installed.get(name)
        if model is None:
            raise SimError(404, f'model "{raw}" not found, try pulling it first')
        return name, model

    def cut_connections(self) -> None:
        """Drop the connection of every request in flight, as a crashing server would."""
        for transport in list(self.in_flight):
            transport.abort()
        self.in_flight.clear()


SIM = web.AppKey("sim", Sim)


async def decode(request: web.Request, kind: type[T]) -> T:
    """The request body as ``kind``; unknown fields are ignored, wrong types are a 400."""
    body = await request.read()
    if not body.strip():
        raise SimError(400, "missing request body")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:
        raise SimError(400, str(exc)) from None


def reply(data: object, status: int = 200) -> web.Response:
    """A JSON body the way Ollama's gin server sends it."""
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(request: web.Request, content_type: str) -> web.StreamResponse:
    """A started streaming response (NDJSON or SSE)."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    return response


def line(data: object) -> bytes:
    """One NDJSON line."""
    return msgspec.json.encode(data) + b"\n"
