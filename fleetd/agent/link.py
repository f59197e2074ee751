"""The agent's link to the coordinator: register (with backoff), then heartbeat forever.

A 403 ``gpu_required`` ends the agent with one clear line; a 404 on heartbeat means the
coordinator forgot us (new database), so we register again; anything else is retried. With
several coordinator URLs, one that cannot be reached (or answers 5xx) hands over to the next
at once (``coordinators.py``); the backoff starts once every URL has failed in turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import aiohttp
import msgspec

from fleetd import __version__
from fleetd.agent.coordinators import Coordinators
from fleetd.agent.ollamas import LocalOllamas
from fleetd.agent.readiness import Readiness
from fleetd.agent.runtime import CoordinatorMirror, Identity, InFlight, Stop, SupportedModels
from fleetd.agent.signals import Wakeup
from fleetd.config import AgentConfig
from fleetd.core.gpu import Gpu, GpuProbe
from fleetd.core.ollama import OllamaError, error_message
from fleetd.core.wire import (
    MESSAGE_MAX,
    Heartbeat,
    InstalledModel,
    Registration,
    RegistrationReply,
    clip,
)

log = logging.getLogger("fleetd.agent.link")

EXIT_NO_GPU = 3
TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)


class _Rejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _ErrorBody(msgspec.Struct):
    error: dict[str, str] | str


def _rejection(status: int, body: bytes) -> _Rejected:
    try:
        err = msgspec.json.decode(body, type=_ErrorBody).error
        if isinstance(err, dict):
            return _Rejected(status, err.get("code", ""), err.get("message", ""))
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    return _Rejected(status, "", error_message(body))


def _cpu_times() -> tuple[float, float]:
    with open("/proc/stat", encoding="ascii") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts), idle


def _memory_percent() -> float | None:
    info: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    if not total or avail is None:
        return None
    return round(100.0 * (total - avail) / total, 1)


class Link:
    def __init__(
        self,
        config: AgentConfig,
        session: aiohttp.ClientSession,
        probe: GpuProbe,
        *,
        identity: Identity,
        supported: SupportedModels,
        ollamas: LocalOllamas,
        readiness: Readiness,
        in_flight: InFlight,
        mirror: CoordinatorMirror,
        stop: Stop,
        coordinators: Coordinators,
    ) -> None:
        self.config = config
        self.session = session
        self.probe = probe
        self.identity = identity
        self.supported = supported
        self.ollamas = ollamas
        self.readiness = readiness
        self.in_flight = in_flight
        self.mirror = mirror
        self.stop = stop
        self.coordinators = coordinators
        self._cpu_prev: tuple[float, float] | None = None
        self.wake = readiness.listen(Wakeup())
        """Readiness changed: the next heartbeat goes out at once."""

    @property
    def base(self) -> str:
        return self.coordinators.current

    async def _post(self, path: str, payload: msgspec.Struct) -> RegistrationReply:
        async with self.session.post(
            self.base + path,
            data=msgspec.json.encode(payload),
            headers={**self.identity.auth_headers(), "Content-Type": "application/json"},
            timeout=TIMEOUT,
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise _rejection(r.status, body)
        return msgspec.json.decode(body, type=RegistrationReply)

    async def _installed(self) -> tuple[list[str], list[InstalledModel] | None]:
        try:
            versions = await self.ollamas.versions()
        except OllamaError as e:
            log.warning("%s", e)
            return [], None
        try:
            return versions, await self.ollamas.installed()
        except OllamaError as e:
            log.warning("%s", e)
            return versions, None

    def _load(self) -> tuple[float | None, float | None]:
        """CPU percent since the last call and memory percent; blocking /proc reads."""
        try:
            total, idle = _cpu_times()
            mem = _memory_percent()
        except (OSError, ValueError, IndexError):
            return None, None
        cpu = None
        if self._cpu_prev is not None and total > self._cpu_prev[0]:
            dt, di = total - self._cpu_prev[0], idle - self._cpu_prev[1]
            cpu = round(100.0 * (1 - di / dt), 1)
        self._cpu_prev = (total, idle)
        return cpu, mem

    async def register(self) -> None:
        """Until registered: a refusal for lack of GPU stops the agent; other failures retry."""
        delay = 1.0
        misses = 0
        while True:
            base = self.base
            gpus = await self.probe.probe()
            versions, models = await self._installed()
            reg = Registration(
                name=self.identity.name,
                url=self.identity.url,
                gpus=[Gpu(name=g.name, memory_bytes=g.memory_bytes) for g in gpus],
                instance_id=self.identity.instance_id,
                version=__version__,
                ollama_versions=versions,
                models=models,
                heartbeat_interval_s=self.config.heartbeat_interval_s,
            )
            try:
                reply = await self._post("/api/agents", reg)
            except _Rejected as e:
                if e.status == 403 and e.code == "gpu_required":
                    log.error(
                        "coordinator refused this agent: no GPU found (probe %r): %s",
                        self.probe.name,
                        e,
                    )
                    self.stop.fail(EXIT_NO_GPU)
                    return
                if e.status >= 500 and self.coordinators.failed(base, f"HTTP {e.status}"):
                    misses += 1
                    if misses % len(self.coordinators):
                        continue
                log.warning(
                    "registration at %s refused (HTTP %d): %s; retrying in %.0fs",
                    base,
                    e.status,
                    e,
                    delay,
                )
            except (aiohttp.ClientError, asyncio.TimeoutError, msgspec.DecodeError) as e:
                if self.coordinators.failed(base, str(e) or type(e).__name__):
                    misses += 1
                    if misses % len(self.coordinators):
                        continue  # the next coordinator at once; back off after a full round
                log.warning(
                    "coordinator %s unreachable (%s); retrying in %.0fs",
                    base,
                    e or type(e).__name__,
                    delay,
                )
            else:
                self.identity.registered(reply.id)
                self.mirror.heard(base if reply.mirror else "")
                await self.supported.update(reply.supported_models)
                log.info("registered with %s as agent %s (%s)", base, reply.id, self.identity.name)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def heartbeat_once(self) -> None:
        r = self.readiness
        gpus = await self.probe.probe()
        cpu, mem = await asyncio.to_thread(self._load)
        hb = Heartbeat(
            initializing=r.initializing,
            ready_models=r.ready(),
            total_models=len(self.supported.models),
            requests_in_flight=self.in_flight.count,
            gpus=gpus or None,
            cpu_percent=cpu,
            memory_percent=mem,
            status_message=clip(r.message, MESSAGE_MAX),
            loaded_models=sorted(r.loaded()),
        )
        base = self.base
        reply = await self._post(f"/api/agents/{self.identity.agent_id}/heartbeat", hb)
        self.mirror.heard(base if reply.mirror else "")
        await self.supported.update(reply.supported_models)

    async def run(self) -> None:
        await self.identity.advertised()
        await self.register()
        interval = self.config.heartbeat_interval_s
        failing_since: float | None = None
        misses = 0
        while not self.stop.event.is_set():
            await self.wake.wait(interval)
            base = self.base
            try:
                await self.heartbeat_once()
                misses = 0
                if failing_since is not None:
                    log.info("coordinator %s reachable again", base)
                    failing_since = None
            except _Rejected as e:
                if e.status >= 500 and self.coordinators.failed(base, f"HTTP {e.status}"):
                    misses += 1
                    if misses % len(self.coordinators):
                        self.wake.set()  # the next coordinator hears from us at once
                elif e.status == 404:
                    log.warning(
                        "coordinator does not know agent %s; registering again",
                        self.identity.agent_id,
                    )
                    await self.register()
                else:
                    log.warning("heartbeat refused (HTTP %d): %s", e.status, e)
            except (aiohttp.ClientError, asyncio.TimeoutError, msgspec.DecodeError) as e:
                if self.coordinators.failed(base, str(e) or type(e).__name__):
                    misses += 1
                    if misses % len(self.coordinators):
                        self.wake.set()  # the next coordinator hears from us at once
                        continue
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "heartbeat to %s failed (%s); will keep trying",
                        base,
                        e or type(e).__name__,
                    )


def default_name() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()
