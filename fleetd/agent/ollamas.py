"""The agent's local Ollama servers (``[[agent.ollama]]``), owned in one place.

Every subsystem asks this object instead of building its own clients: the link (versions
and installed models for registration), the download queue (installed models before a pull,
placement, deletes), the residency keeper (what is installed and loaded, loads) and the
inference routes (which server to send a request to, ``ensure_loaded``). What each server has
installed and loaded is cached here and updated by whoever reads or changes it, so readiness
(``readiness.py``) is computed from one picture rather than from copies kept in several
places.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
from aiohttp import web

from fleetd.agent.placement import choose
from fleetd.agent.signals import Notice
from fleetd.config import AgentConfig, expand
from fleetd.core.ollama import LoadedModel, Ollama, OllamaError
from fleetd.core.wire import InstalledModel

log = logging.getLogger("fleetd.agent.ollamas")

FOREVER = timedelta(days=365 * 100)
"""An ``expires_at`` further ahead than this means ``keep_alive: -1`` (Ollama shows the year
2318 for such a model), as opposed to the five minutes a request without keep_alive leaves."""


def _resident(m: LoadedModel, now: datetime) -> bool:
    return m.expires_at is None or m.expires_at - now > FOREVER


class LocalServer:
    """One configured Ollama server: its client, the directory its pulls fill, and what it
    was last seen to have installed and loaded."""

    def __init__(self, ollama: Ollama, models_dir: Path) -> None:
        self.ollama = ollama
        self.url = ollama.url
        self.models_dir = models_dir
        self.installed: frozenset[str] = frozenset()
        self.loaded: dict[str, bool] = {}
        """Model name -> loaded for good (``keep_alive: -1``); a model loaded for a while only
        is here with False."""
        self.in_flight = 0
        """Inference requests at this server now (to send the next to the least busy)."""

    def resident(self) -> set[str]:
        return {m for m, forever in self.loaded.items() if forever}

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Around one inference request at this server."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def unreachable(self) -> None:
        self.installed, self.loaded = frozenset(), {}

    async def read_loaded(self) -> None:
        now = datetime.now(timezone.utc)
        self.loaded = {(m.name or m.model): _resident(m, now) for m in await self.ollama.ps()}


class LocalOllamas:
    """The configured servers, the cached picture of each, placement and loads."""

    def __init__(self, config: AgentConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.servers = [
            LocalServer(Ollama(session, s.url), expand(s.models_dir)) for s in config.ollama
        ]
        self._load_locks: dict[str, asyncio.Lock] = {}
        self.changed = Notice()
        """Fired when what is installed or loaded for good changed on some server."""
        self._last = self._picture()
        self.installed_changed = Notice()
        """Fired when a model was pulled or deleted here (the coordinator is told, the
        residency keeper looks at once)."""

    def pulled(self) -> None:
        """A pull into one of the servers finished."""
        self.installed_changed.fire()

    def _picture(self) -> list[tuple[frozenset[str], frozenset[str]]]:
        return [(s.installed, frozenset(s.resident())) for s in self.servers]

    def _publish(self) -> None:
        now = self._picture()
        if now != self._last:
            self._last = now
            self.changed.fire()

    # -- the cached picture --------------------------------------------------------------

    def where(self, model: str) -> LocalServer | None:
        """The server that has ``model`` installed (the first listed, if several)."""
        return next((s for s in self.servers if model in s.installed), None)

    def is_installed(self, model: str) -> bool:
        return self.where(model) is not None

    def is_resident(self, model: str) -> bool:
        """Installed and loaded for good on some server."""
        return any(model in s.installed and s.loaded.get(model) for s in self.servers)

    def forget(self, model: str, server: LocalServer) -> None:
        """``model`` was deleted from ``server``."""
        server.installed = server.installed - {model}
        server.loaded.pop(model, None)
        self._publish()

    # -- reading the servers -------------------------------------------------------------

    async def refresh(self) -> list[str]:
        """Read installed and loaded models of every server; the problems of those that
        could not be read (they count as having nothing, so nothing is routed to them)."""
        problems: list[str] = []
        for s in self.servers:
            try:
                tags = await s.ollama.tags()
                await s.read_loaded()
            except OllamaError as e:
                problems.append(str(e))
                s.unreachable()
                continue
            s.installed = frozenset(t.name for t in tags)
        self._publish()
        return problems

    async def read_tags(self) -> tuple[dict[str, dict[str, InstalledModel]], list[OllamaError]]:
        """Installed models per server URL of the servers that answered, and the failures."""
        out: dict[str, dict[str, InstalledModel]] = {}
        errors: list[OllamaError] = []
        for s in self.servers:
            try:
                models = {m.name: m for m in await s.ollama.tags()}
            except OllamaError as e:
                errors.append(e)
                s.unreachable()
                continue
            s.installed = frozenset(models)
            out[s.url] = models
        self._publish()
        return out, errors

    async def installed(self) -> list[InstalledModel]:
        """Every model installed on this agent's servers (the first server's copy wins);
        ``OllamaError`` when a server cannot be read, as a partial list would say too little."""
        tags, errors = await self.read_tags()
        if errors:
            raise errors[0]
        seen: dict[str, InstalledModel] = {}
        for models in tags.values():
            for name, m in models.items():
                seen.setdefault(name, m)
        return list(seen.values())

    async def versions(self) -> list[str]:
        return [await s.ollama.version() for s in self.servers]

    # -- placement and changes -----------------------------------------------------------

    async def place(
        self,
        model: str,
        need: int,
        *,
        pinned: str,
        models_on: dict[str, set[str]],
        supported: list[str],
    ) -> LocalServer:
        """The server a download of ``model`` goes to (see ``placement``); ``NoRoom`` when
        no candidate has ``need`` bytes plus ``agent.disk_margin_bytes`` free."""
        return await choose(
            self.servers,
            model,
            need,
            self.config.disk_margin_bytes,
            pinned=pinned,
            models_on=models_on,
            supported=supported,
        )

    async def delete(self, model: str, urls: list[str]) -> None:
        for s in self.servers:
            if s.url in urls:
                await s.ollama.delete(model)
                self.forget(model, s)
        self.installed_changed.fire()

    # -- inference -----------------------------------------------------------------------

    def for_model(self, model: str) -> list[LocalServer]:
        """Servers to send a request for ``model`` to, best first: those with it loaded,
        least busy first."""
        if len(self.servers) == 1:
            return self.servers
        return sorted(self.servers, key=lambda s: (model not in s.loaded, s.in_flight))

    async def load(self, server: LocalServer, model: str) -> None:
        """Load ``model`` on ``server`` for good and read back what is loaded there (a load
        can evict other models when VRAM runs short)."""
        await server.ollama.load(model, -1)
        await server.read_loaded()
        self._publish()

    async def ensure_loaded(self, model: str) -> None:
        """Load ``model`` with ``keep_alive: -1`` on the first server that can, unless it is
        resident already; one load at a time per model. The last ``OllamaError`` when no
        server could."""
        if self.is_resident(model):
            return  # the common case, on every inference request: no lock
        async with self._load_locks.setdefault(model, asyncio.Lock()):
            if self.is_resident(model):
                return
            last: OllamaError | None = None
            for s in self.for_model(model):
                try:
                    await s.ollama.load(model, -1)
                except OllamaError as e:
                    last = e
                    continue
                # A model Ollama loads is installed there, whatever the last read said.
                s.installed = s.installed | {model}
                s.loaded[model] = True
                self._publish()
                return
            assert last is not None
            raise last


OLLAMAS = web.AppKey("ollamas", LocalOllamas)
