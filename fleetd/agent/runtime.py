"""The agent's small shared objects, one job each: who it is (``Identity``), which models the
coordinator wants it to serve (``SupportedModels``), how many requests it is serving
(``InFlight``), whether the coordinator's mirror is on (``CoordinatorMirror``) and how it ends
(``Stop``). Each is built once in ``build_app`` and handed to
the parts that need it; the parts tell each other news through ``signals``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path

from aiohttp import web

from fleetd.agent.signals import Notice
from fleetd.core import proxy
from fleetd.core.tokens import private_dir

log = logging.getLogger("fleetd.agent")


class Identity:
    """Who this agent is: the instance id it keeps in ``data_dir``, its name and token, the
    URL it is reached at (known once it listens) and the id the coordinator gave it."""

    def __init__(self, instance_id: str, name: str, agent_token: str, advertise_url: str) -> None:
        self.instance_id = instance_id
        self.name = name
        self.agent_token = agent_token
        self._configured_url = advertise_url
        self.url = ""
        self.agent_id: str | None = None
        """None until the coordinator accepted a registration."""
        self._advertised = asyncio.Event()

    def advertise(self, bound_url: str) -> None:
        """The URL the coordinator will use: ``agent.advertise_url``, else where it listens."""
        self.url = self._configured_url or bound_url
        self._advertised.set()

    async def advertised(self) -> None:
        """Until the URL is known (registration must carry it)."""
        await self._advertised.wait()

    def registered(self, agent_id: str) -> None:
        self.agent_id = agent_id

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}


class SupportedModels:
    """The coordinator's supported list as last heard, kept in ``data_dir`` so that a restart
    without the coordinator still knows what to keep loaded."""

    def __init__(self, data_dir: Path, models: list[str]) -> None:
        self.path = data_dir / "supported_models.json"
        self.models = models
        self.changed = Notice()

    def __contains__(self, model: str) -> bool:
        return model in self.models

    async def update(self, models: list[str]) -> None:
        if models != self.models:
            self.models = list(models)
            self.changed.fire()
            await asyncio.to_thread(save_json, self.path, self.models)


class CoordinatorMirror:
    """Whether the coordinator's registry mirror is on, as its last reply said; pulls go
    through it when it is (``via_mirror``)."""

    def __init__(self) -> None:
        self.url = ""
        """The coordinator whose registry mirror this agent's Ollama pulls through ("" = off)."""
        self.known = asyncio.Event()
        """Set once a coordinator's reply said whether its mirror is on."""

    def heard(self, mirror_url: str) -> None:
        self.url = mirror_url
        self.known.set()


class InFlight:
    """Inference requests this agent is serving now: counted for heartbeats and
    ``/fleetd/status``, and ended saying why when the agent stops."""

    def __init__(self) -> None:
        self.count = 0
        self.flights: set[proxy.Flight] = set()
        self.stopping = False
        self._idle = asyncio.Event()

    def took_off(self, flight: proxy.Flight) -> None:
        self.count += 1
        self.flights.add(flight)

    def landed(self, flight: proxy.Flight) -> None:
        self.count -= 1
        self.flights.discard(flight)
        if self.stopping and not self.flights:
            self._idle.set()

    async def stop(self, grace_s: float, why: str) -> None:
        """On shutdown: requests in flight get ``grace_s`` to finish, then end with ``why``
        (not as if Ollama had failed); the caller refuses new ones once ``stopping``."""
        self.stopping = True
        if not self.flights:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return
        except asyncio.TimeoutError:
            pass
        log.warning("ending %d request(s) in flight: the agent is stopping", len(self.flights))
        error = proxy.ShuttingDown(why)
        for flight in list(self.flights):
            flight.abort(error)


class Stop:
    """The agent ends on SIGINT/SIGTERM (exit 0) or when a part cannot go on (its code)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.exit_code = 0

    def fail(self, code: int) -> None:
        self.exit_code = code
        self.event.set()


def save_json(path: Path, obj: object) -> None:
    """Atomic write (temp file + rename), so a crash never leaves half a file. Blocking."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_identity(data_dir: Path) -> tuple[str, list[str]]:
    """The stable instance id of this agent (created once) and the last known supported list."""
    private_dir(data_dir)
    id_file = data_dir / "instance_id"
    try:
        instance_id = id_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        instance_id = ""
    if not instance_id:
        instance_id = uuid.uuid4().hex
        id_file.write_text(instance_id + "\n", encoding="utf-8")
    try:
        supported = json.loads((data_dir / "supported_models.json").read_text(encoding="utf-8"))
        if not isinstance(supported, list) or not all(isinstance(m, str) for m in supported):
            supported = []
    except (FileNotFoundError, ValueError):
        supported = []
    return instance_id, supported


IDENTITY = web.AppKey("identity", Identity)
SUPPORTED = web.AppKey("supported", SupportedModels)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
STOP = web.AppKey("stop", Stop)
