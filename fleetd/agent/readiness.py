"""How ready the agent is, computed from what its Ollama servers have (``LocalOllamas``) and
what the coordinator wants (``SupportedModels``); read by heartbeats, ``/fleetd/status`` and
``/v1/models``. Only the status message is kept here: the residency keeper writes it.
"""

from __future__ import annotations

from aiohttp import web

from fleetd.agent.ollamas import LocalOllamas
from fleetd.agent.runtime import SupportedModels
from fleetd.agent.signals import Notice, Wakeup


class Readiness:
    def __init__(self, supported: SupportedModels, ollamas: LocalOllamas) -> None:
        self.supported = supported
        self.ollamas = ollamas
        self.message = ""
        self._message_changed = Notice()
        self._ready_once = False

    def listen(self, wakeup: Wakeup) -> Wakeup:
        """Wake ``wakeup`` when a model became (or stopped being) downloaded or resident,
        or the message changed."""
        self.ollamas.changed.listen(wakeup)
        return self._message_changed.listen(wakeup)

    def downloaded(self) -> set[str]:
        return {m for m in self.supported.models if self.ollamas.is_installed(m)}

    def loaded(self) -> set[str]:
        """Supported models installed and loaded for good."""
        return {m for m in self.supported.models if self.ollamas.is_resident(m)}

    def ready(self) -> int:
        return len(self.loaded())

    def set_message(self, message: str) -> None:
        if message != self.message:
            self.message = message
            self._message_changed.fire()

    @property
    def initializing(self) -> bool:
        """Not yet ready once (every supported model downloaded and resident). Once ready,
        the agent keeps serving the models it has while it fetches another (a re-download,
        a newly supported model): the coordinator routes per model."""
        if not self._ready_once:
            total = len(self.supported.models)
            self._ready_once = total > 0 and self.ready() >= total
        return not self._ready_once


READINESS = web.AppKey("readiness", Readiness)
