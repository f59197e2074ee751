"""Keeps every downloaded supported model loaded for good, and says how ready the agent is.

Ollama evicts models silently when VRAM runs short, and a request without ``keep_alive`` can
leave a reloaded model resident for five minutes only. So at least every heartbeat interval
(or ``agent.residency_check_s``) the keeper reads ``/api/ps`` of each server and loads, with
``keep_alive: -1``, every supported model that is missing or due to expire. When loading one
supported model evicts another, or Ollama refuses a load, the GPUs cannot hold the set: the
keeper says so in the agent's status message and backs off instead of loading in a circle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from aiohttp import web

from fleetd.agent.downloads import DOWNLOADS
from fleetd.agent.runtime import RUNTIME, Runtime
from fleetd.core.background import background
from fleetd.core.http import CLIENT
from fleetd.core.ollama import LoadedModel, Ollama, OllamaError

log = logging.getLogger("fleetd.agent.residency")

FOREVER = timedelta(days=365 * 100)
"""An ``expires_at`` further ahead than this means ``keep_alive: -1`` (Ollama shows 2318)."""
RELEASED_KEEP_ALIVE = "5m"
"""Ollama's default keep_alive, given back to a model taken off the supported list."""
BACKOFF_S = (30.0, 60.0, 120.0, 300.0)
"""Waits before trying again after the GPUs could not hold every supported model."""


def _resident(m: LoadedModel, now: datetime) -> bool:
    return m.expires_at is None or m.expires_at - now > FOREVER


class Residency:
    def __init__(self, rt: Runtime, servers: list[Ollama]) -> None:
        self.rt = rt
        self.servers = servers
        self.wake = asyncio.Event()
        self._hold_until = 0.0
        self._holds = 0
        self._hold_reason = ""
        self._hold_key: tuple[frozenset[str], tuple[str, ...]] | None = None
        self._kept = set(rt.supported_models)
        """Models this keeper holds resident (or did until the list changed)."""

    def poke(self) -> None:
        self.wake.set()

    async def _state(self) -> tuple[dict[str, Ollama], dict[str, dict[str, bool]], list[str]]:
        """Where each model is installed (first server wins), what is loaded per server (name ->
        resident for good), and the servers that could not be read."""
        where: dict[str, Ollama] = {}
        loaded: dict[str, dict[str, bool]] = {}
        problems: list[str] = []
        now = datetime.now(timezone.utc)
        for o in self.servers:
            try:
                tags = await o.tags()
                ps = await o.ps()
            except OllamaError as e:
                problems.append(str(e))
                continue
            for t in tags:
                where.setdefault(t.name, o)
            loaded[o.url] = {(m.name or m.model): _resident(m, now) for m in ps}
        return where, loaded, problems

    async def check(self) -> None:
        """One pass: read the servers, load what is missing, publish readiness."""
        rt = self.rt
        supported = list(rt.supported_models)
        where, loaded, problems = await self._state()
        downloaded = {m for m in supported if m in where}
        key = (frozenset(downloaded), tuple(supported))
        if self._hold_key is not None and key != self._hold_key:
            self._hold_until, self._holds, self._hold_key = 0.0, 0, None  # something changed
        holding = time.monotonic() < self._hold_until
        await self._release(set(supported), loaded, where)
        for model in supported:
            o = where.get(model)
            if o is None or loaded.get(o.url, {}).get(model) or holding:
                continue
            before = {m for m, forever in loaded.get(o.url, {}).items() if forever}
            try:
                await o.load(model, -1)
                after_ps = await o.ps()
            except OllamaError as e:
                self._hold(key, f"cannot load {model} on {o.url}: {e}")
                holding = True
                continue
            now = datetime.now(timezone.utc)
            loaded[o.url] = {(m.name or m.model): _resident(m, now) for m in after_ps}
            evicted = sorted(m for m in before if m in downloaded and m not in loaded[o.url])
            log.info("loaded %s on %s with keep_alive -1", model, o.url)
            if evicted:
                held = sum(1 for m in downloaded if loaded.get(where[m].url, {}).get(m))
                self._hold(
                    key,
                    f"GPU memory cannot hold all supported models: loading {model} on {o.url} "
                    f"evicted {', '.join(evicted)} ({held} of {len(downloaded)} resident)",
                )
                holding = True
        resident = {m for m in downloaded if loaded.get(where[m].url, {}).get(m)}
        missing = [m for m in supported if m not in downloaded]
        if problems:
            message = "; ".join(problems)
        elif self._hold_key is not None and resident != downloaded:
            message = self._hold_reason
        elif missing:
            message = f"waiting for download of {', '.join(missing)}"
        elif resident != downloaded:
            message = f"loading {', '.join(m for m in supported if m not in resident)}"
        else:
            message = ""
            self._hold_key, self._holds = None, 0
        r = rt.readiness
        if (r.downloaded, r.loaded, r.message) != (downloaded, resident, message):
            r.downloaded, r.loaded, r.message = downloaded, resident, message
            rt.changed.set()

    async def _release(
        self, supported: set[str], loaded: dict[str, dict[str, bool]], where: dict[str, Ollama]
    ) -> None:
        """A model taken off the supported list stays installed but is no longer held: its
        keep_alive goes back to Ollama's default, so it unloads once idle. Only models this
        keeper held are touched (a client's own keep_alive -1 is the client's business)."""
        for model in sorted(self._kept - supported):
            o = where.get(model)
            if o is not None and loaded.get(o.url, {}).get(model):
                try:
                    await o.load(model, RELEASED_KEEP_ALIVE)
                except OllamaError as e:
                    log.warning("cannot release %s on %s: %s; trying again", model, o.url, e)
                    continue
                loaded[o.url][model] = False
                log.info(
                    "%s is no longer supported: released on %s (unloads after %s idle)",
                    model,
                    o.url,
                    RELEASED_KEEP_ALIVE,
                )
            self._kept.discard(model)
        self._kept |= supported

    def _hold(self, key: tuple[frozenset[str], tuple[str, ...]], reason: str) -> None:
        delay = BACKOFF_S[min(self._holds, len(BACKOFF_S) - 1)]
        self._holds += 1
        self._hold_until = time.monotonic() + delay
        self._hold_key = key
        self._hold_reason = reason
        log.warning("%s; trying again in %.0fs", reason, delay)

    async def run(self) -> None:
        cfg = self.rt.config
        interval = cfg.residency_check_s or cfg.heartbeat_interval_s
        while True:
            self.wake.clear()
            try:
                await self.check()
            except Exception:
                log.exception("residency check failed")
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass


RESIDENCY = web.AppKey("residency", Residency)


async def run_residency(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    keeper = Residency(rt, [Ollama(app[CLIENT], s.url) for s in rt.config.ollama])
    app[RESIDENCY] = keeper
    app[DOWNLOADS].on_installed.append(keeper.poke)
    rt.supported_changed.append(keeper.wake)
    async with background(keeper.run(), "residency"):
        yield
