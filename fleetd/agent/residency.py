"""Keeps every downloaded supported model loaded for good, and says how ready the agent is.

Ollama evicts models silently when VRAM runs short, and a request without ``keep_alive`` can
leave a reloaded model resident for five minutes only. So at least every heartbeat interval
(or ``agent.residency_check_s``) the keeper reads ``/api/ps`` of each server and loads, with
``keep_alive: -1``, every supported model that is missing or due to expire. When loading one
supported model evicts another, or Ollama refuses a load, the GPUs cannot hold the set: the
keeper says so in the agent's status message and backs off instead of loading in a circle.
"""

from __future__ import annotations

import logging
import time

from fleetd.agent.ollamas import LocalOllamas
from fleetd.agent.readiness import Readiness
from fleetd.agent.runtime import SupportedModels
from fleetd.agent.signals import Wakeup
from fleetd.config import AgentConfig
from fleetd.core.ollama import OllamaError

log = logging.getLogger("fleetd.agent.residency")

BACKOFF_S = (30.0, 60.0, 120.0, 300.0)
"""Waits before trying again after the GPUs could not hold every supported model."""


class Residency:
    def __init__(
        self,
        config: AgentConfig,
        supported: SupportedModels,
        ollamas: LocalOllamas,
        readiness: Readiness,
    ) -> None:
        self.config = config
        self.supported = supported
        self.ollamas = ollamas
        self.readiness = readiness
        self.wake = Wakeup()
        """Supported models or installed models changed: check at once."""
        supported.changed.listen(self.wake)
        ollamas.installed_changed.listen(self.wake)
        self._hold_until = 0.0
        self._holds = 0
        self._hold_reason = ""
        self._hold_key: tuple[frozenset[str], tuple[str, ...]] | None = None

    async def check(self) -> None:
        """One pass: read the servers, load what is missing, say how ready the agent is."""
        supported = list(self.supported.models)
        problems = await self.ollamas.refresh()
        where = {m: s for m in supported if (s := self.ollamas.where(m)) is not None}
        downloaded = set(where)
        key = (frozenset(downloaded), tuple(supported))
        if self._hold_key is not None and key != self._hold_key:
            self._hold_until, self._holds, self._hold_key = 0.0, 0, None  # something changed
        holding = time.monotonic() < self._hold_until
        for model in supported:
            s = where.get(model)
            if s is None or s.loaded.get(model) or holding:
                continue
            before = s.resident()
            try:
                await self.ollamas.load(s, model)
            except OllamaError as e:
                self._hold(key, f"cannot load {model} on {s.url}: {e}")
                holding = True
                continue
            evicted = sorted(m for m in before if m in downloaded and m not in s.loaded)
            log.info("loaded %s on %s with keep_alive -1", model, s.url)
            if evicted:
                held = sum(1 for m in downloaded if where[m].loaded.get(m))
                self._hold(
                    key,
                    f"GPU memory cannot hold all supported models: loading {model} on {s.url} "
                    f"evicted {', '.join(evicted)} ({held} of {len(downloaded)} resident)",
                )
                holding = True
        resident = {m for m in downloaded if where[m].loaded.get(m)}
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
        self.readiness.set_message(message)

    def _hold(self, key: tuple[frozenset[str], tuple[str, ...]], reason: str) -> None:
        delay = BACKOFF_S[min(self._holds, len(BACKOFF_S) - 1)]
        self._holds += 1
        self._hold_until = time.monotonic() + delay
        self._hold_key = key
        self._hold_reason = reason
        log.warning("%s; trying again in %.0fs", reason, delay)

    async def run(self) -> None:
        interval = self.config.residency_check_s or self.config.heartbeat_interval_s
        while True:
            self.wake.take()
            try:
                await self.check()
            except Exception:
                log.exception("residency check failed")
            await self.wake.wait(interval)
