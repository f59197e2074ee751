"""Reports the agent's download tasks to the coordinator (``POST /api/agents/{id}/progress``).

Every half second it sends what changed and every running task (so a running download is
heard of at least once a second), plus the installed models when they changed. What the
coordinator has not acknowledged is sent again, so a coordinator restart loses nothing; the
reply names tasks the coordinator wants stopped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from fleetd.agent.runtime import Runtime
from fleetd.core.ollama import OllamaError
from fleetd.core.wire import InstalledModel, ProgressReply, ProgressReport

if TYPE_CHECKING:
    from fleetd.agent.downloads import Downloads

log = logging.getLogger("fleetd.agent.progress")

REPORT_INTERVAL_S = 0.5
"""Progress goes to the coordinator this often while a download runs (the promise is 1 s)."""
REPORT_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)


class Refused(Exception):
    """The coordinator answered a progress report with an error."""


class Reporter:
    def __init__(self, rt: Runtime, session: aiohttp.ClientSession, dl: Downloads) -> None:
        self.rt = rt
        self.session = session
        self.dl = dl
        self._sent_to = ""

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.wait_for(self.dl.report_now.wait(), timeout=REPORT_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self.dl.report_now.clear()
            if self.rt.agent_id is None:
                continue  # not registered yet: nobody to report to
            sent, updates = self.dl.unreported()
            models: list[InstalledModel] | None = None
            if self.dl.models_changed:
                self.dl.models_changed = False
                try:
                    models = await self.dl.installed()
                except OllamaError as err:
                    log.warning("%s", err)
                    self.dl.models_changed = True
            if not updates and models is None:
                continue
            try:
                reply = await self._post(ProgressReport(tasks=updates, models=models))
            except (aiohttp.ClientError, asyncio.TimeoutError, Refused) as err:
                if models is not None:
                    self.dl.models_changed = True
                if isinstance(err, (aiohttp.ClientConnectionError, asyncio.TimeoutError)):
                    # Unacknowledged updates go again, to the next coordinator if there is one.
                    self.rt.coordinators.failed(self._sent_to, str(err) or type(err).__name__)
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
        self._sent_to = self.rt.coordinators.current
        url = f"{self._sent_to}/api/agents/{self.rt.agent_id}/progress"
        async with self.session.post(
            url,
            data=msgspec.json.encode(report),
            headers={**self.rt.auth_headers(), "Content-Type": "application/json"},
            timeout=REPORT_TIMEOUT,
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise Refused(f"HTTP {r.status}: {body[:200].decode(errors='replace')}")
        try:
            return msgspec.json.decode(body, type=ProgressReply)
        except msgspec.DecodeError as err:
            raise Refused(f"unreadable reply: {err}") from None
