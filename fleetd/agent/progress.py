"""Reports the agent's download tasks to the coordinator (``POST /api/agents/{id}/progress``).

Every half second it sends what changed and every running task (so a running download is
heard of at least once a second), plus the installed models when they changed. What the
coordinator has not acknowledged is sent again, so a coordinator restart loses nothing; the
reply names tasks the coordinator wants stopped.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import msgspec

from fleetd.agent.coordinators import Coordinators
from fleetd.agent.download_entry import REPORT_INTERVAL_S
from fleetd.agent.download_queue import DownloadQueue
from fleetd.agent.ollamas import LocalOllamas
from fleetd.agent.runtime import Identity
from fleetd.agent.signals import Wakeup
from fleetd.core.ollama import OllamaError
from fleetd.core.wire import InstalledModel, ProgressReply, ProgressReport

log = logging.getLogger("fleetd.agent.progress")

REPORT_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)


class Refused(Exception):
    """The coordinator answered a progress report with an error."""


class Reporter:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        identity: Identity,
        coordinators: Coordinators,
        dl: DownloadQueue,
        ollamas: LocalOllamas,
    ) -> None:
        self.session = session
        self.identity = identity
        self.coordinators = coordinators
        self._sent_to = ""
        self.dl = dl
        self.ollamas = ollamas
        self.wake = dl.urgent.listen(Wakeup())
        self.models_due = ollamas.installed_changed.listen(Wakeup(pending=True))
        """The installed models changed since the coordinator last heard of them (and it
        has not heard of them at all yet)."""

    async def run(self) -> None:
        failing = False
        while True:
            await self.wake.wait(REPORT_INTERVAL_S)
            if self.identity.agent_id is None:
                continue  # not registered yet: nobody to report to
            sent, updates = self.dl.unreported()
            models: list[InstalledModel] | None = None
            if self.models_due.take():
                try:
                    models = await self.ollamas.installed()
                except OllamaError as err:
                    log.warning("%s", err)
                    self.models_due.set()
            if not updates and models is None:
                continue
            try:
                reply = await self._post(ProgressReport(tasks=updates, models=models))
            except (aiohttp.ClientError, asyncio.TimeoutError, Refused) as err:
                if models is not None:
                    self.models_due.set()
                if isinstance(err, (aiohttp.ClientConnectionError, asyncio.TimeoutError)):
                    # Unacknowledged updates go again, to the next coordinator if there is one.
                    self.coordinators.failed(self._sent_to, str(err) or type(err).__name__)
                if not failing:
                    log.warning(
                        "progress report to the coordinator failed: %s", err or type(err).__name__
                    )
                    failing = True
                continue
            if failing:
                log.info("progress reports reach the coordinator again")
                failing = False
            self.dl.acknowledge(sent)
            for task_id in reply.cancel:
                self.dl.cancel(task_id)

    async def _post(self, report: ProgressReport) -> ProgressReply:
        self._sent_to = self.coordinators.current
        url = f"{self._sent_to}/api/agents/{self.identity.agent_id}/progress"
        async with self.session.post(
            url,
            data=msgspec.json.encode(report),
            headers={**self.identity.auth_headers(), "Content-Type": "application/json"},
            timeout=REPORT_TIMEOUT,
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise Refused(f"HTTP {r.status}: {body[:200].decode(errors='replace')}")
        try:
            return msgspec.json.decode(body, type=ProgressReply)
        except msgspec.DecodeError as err:
            raise Refused(f"unreadable reply: {err}") from None
