"""One download, start to end: the local Ollama servers asked whether the model is there
already, the registry (or the coordinator's mirror, ``via_mirror``) asked for its size, a
server with disk room chosen (``placement``), an old copy removed for a re-download, then
Ollama's pull stream followed, with its speed, and stopped when it stalls.

Failures between the agent and Ollama or the registry (unreachable, stream cut) are retried
with backoff, each retry continuing from Ollama's partial download; Ollama's own verdicts
(unknown model, no space left) end the task at once with Ollama's words.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

import aiohttp

from fleetd.agent import via_mirror
from fleetd.agent.download_entry import REPORT_INTERVAL_S, Entry
from fleetd.agent.ollamas import LocalOllamas, LocalServer
from fleetd.agent.placement import NoRoom
from fleetd.agent.runtime import CoordinatorMirror, SupportedModels
from fleetd.config import AgentConfig
from fleetd.core.catalog import CatalogError, CatalogNotFound
from fleetd.core.ollama import OllamaError, PullProgress
from fleetd.core.wire import InstalledModel

log = logging.getLogger("fleetd.agent.downloads")

RETRIES = 3
"""Transient failures (Ollama unreachable, stream cut) are retried this many times, resuming."""
STALL_MIN_BYTES = 1 << 20
"""Less than this in ``download_stall_timeout_s`` is no progress (a trickle, e.g. 1 byte/s)."""
SPEED_ALPHA = 0.3


class Failed(Exception):
    """The task cannot succeed as things stand; the message is what the user sees."""


class Stalled(OllamaError):
    """The pull made (almost) no progress for ``download_stall_timeout_s``; retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class Ledger(Protocol):
    """What a pull needs of the queue it runs for."""

    def changed(self, e: Entry, *, now: bool = False) -> None:
        """``e`` changed; ``now``: its status or server did (save and report it at once)."""

    def unfinished(self) -> Iterable[Entry]:
        """Entries queued or downloading (where they go counts for placement)."""


class _Meter:
    """Smoothed speed of one running pull, sampled as often as progress is reported."""

    def __init__(self) -> None:
        self.t = 0.0
        self.done = -1

    def sample(self, e: Entry) -> None:
        now = time.monotonic()
        if self.done < 0:
            self.t, self.done = now, e.completed_bytes
            return
        dt = now - self.t
        if dt < REPORT_INTERVAL_S:
            return
        rate = max(0.0, (e.completed_bytes - self.done) / dt)
        e.speed_bps = (
            rate if e.speed_bps <= 0 else SPEED_ALPHA * rate + (1 - SPEED_ALPHA) * e.speed_bps
        )
        left = max(0, e.total_bytes - e.completed_bytes)
        e.eta_s = left / e.speed_bps if e.speed_bps > 0 else None
        self.t, self.done = now, e.completed_bytes


class Puller:
    def __init__(
        self,
        config: AgentConfig,
        session: aiohttp.ClientSession,
        ollamas: LocalOllamas,
        supported: SupportedModels,
        mirror: CoordinatorMirror,
    ) -> None:
        self.config = config
        self.session = session
        self.ollamas = ollamas
        self.supported = supported
        self.mirror = mirror
        self._placing = asyncio.Lock()

    async def pull(self, e: Entry, ledger: Ledger) -> None:
        """Try, and retry transient failures with backoff; each retry resumes the partial.
        ``Failed`` when the task cannot succeed."""
        meter = _Meter()
        for attempt in range(RETRIES + 1):
            try:
                await self._attempt(e, ledger, meter)
                return
            except OllamaError as err:
                if not err.transient:
                    raise Failed(str(err)) from None
                if attempt == RETRIES:
                    if isinstance(err, Stalled):
                        raise Failed(f"{err}, {RETRIES + 1} tries") from None
                    raise Failed(f"{err} (gave up after {RETRIES} retries)") from None
                if attempt == RETRIES - 1 and via_mirror.uses_mirror(e, self.mirror.url):
                    via_mirror.go_direct(e, str(err))
                delay = 2.0**attempt
                log.warning(
                    "task %s: %s: %s; retry %d/%d in %.0fs",
                    e.task_id,
                    e.model,
                    err,
                    attempt + 1,
                    RETRIES,
                    delay,
                )
            except CatalogNotFound as err:
                raise Failed(f"model {e.model} not found in the registry ({err})") from None
            except CatalogError as err:
                if attempt == RETRIES:
                    raise Failed(f"cannot learn the size of {e.model}: {err}") from None
                delay = 2.0**attempt
                log.warning("task %s: registry: %s; retry in %.0fs", e.task_id, err, delay)
            e.speed_bps, e.eta_s = 0.0, None
            ledger.changed(e)
            await asyncio.sleep(delay)

    async def _attempt(self, e: Entry, ledger: Ledger, meter: _Meter) -> None:
        await via_mirror.settled(self.mirror.known)
        tags, errors = await self.ollamas.read_tags()
        for err in errors:
            log.warning("%s", err)
        if not tags and errors:
            raise OllamaError(
                f"no usable Ollama server on this agent: {errors[-1]}", transient=True
            )
        holders = [url for url, models in tags.items() if e.model in models]
        if holders and not e.redownload:
            e.total_bytes = e.completed_bytes = tags[holders[0]][e.model].size
            return
        if e.total_bytes <= 0:
            e.total_bytes = await via_mirror.size(
                self.session, e, self.mirror.url, self.config.registry_url
            )
            ledger.changed(e)
        freed = 0 if e.deleted or not holders else tags[holders[0]][e.model].size
        server = await self._place(e, ledger, tags, freed)
        if e.redownload and not e.deleted:
            await self.ollamas.delete(e.model, holders)
            e.deleted = True
            ledger.changed(e, now=True)
            log.info("task %s: removed %s before downloading it again", e.task_id, e.model)

        def progress(p: PullProgress) -> None:
            e.total_bytes = max(e.total_bytes, p.total)
            e.completed_bytes = min(p.completed, e.total_bytes)
            meter.sample(e)
            ledger.changed(e)

        await self._watched(via_mirror.pull(server.ollama, e, self.mirror.url, progress), e)
        self.ollamas.pulled()

    async def _watched(self, pull: Coroutine[Any, Any, None], e: Entry) -> None:
        """Run ``pull``, ended as ``Stalled`` when ``e`` gains less than ``STALL_MIN_BYTES``
        in ``download_stall_timeout_s``: Ollama keeps sending progress lines for a download
        that moves no byte (or one a second), so a silent socket is not the only stall."""
        window = self.config.download_stall_timeout_s
        task = asyncio.ensure_future(pull)
        mark, since = e.completed_bytes, time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=min(1.0, window / 4))
                if done:
                    return task.result()
                now = time.monotonic()
                if e.completed_bytes - mark >= STALL_MIN_BYTES:
                    mark, since = e.completed_bytes, now
                elif now - since >= window and not 0 < e.total_bytes <= e.completed_bytes:
                    # (All bytes in, Ollama verifying: that takes its time and is no stall.)
                    raise Stalled(
                        f"stalled: no progress for {window:g} s "
                        f"(less than {STALL_MIN_BYTES >> 20} MiB)"
                    )
        finally:
            if not task.done():
                task.cancel()  # closes the stream: Ollama cancels the pull, the partial stays
                try:
                    await task
                except (asyncio.CancelledError, OllamaError):
                    pass

    async def _place(
        self, e: Entry, ledger: Ledger, tags: dict[str, dict[str, InstalledModel]], freed: int
    ) -> LocalServer:
        """Choose (once) the server for ``e`` among those with room; fail naming the shortfall."""
        async with self._placing:  # two placements at once would both pick the emptiest
            models_on = {url: set(models) for url, models in tags.items()}
            for other in ledger.unfinished():
                if other.server in models_on:
                    models_on[other.server].add(other.model)
            try:
                chosen = await self.ollamas.place(
                    e.model,
                    max(0, e.total_bytes - e.completed_bytes - freed),
                    pinned=e.server,
                    models_on=models_on,
                    supported=self.supported.models,
                )
            except NoRoom as err:
                raise Failed(str(err)) from None
            if e.server != chosen.url:
                e.server = chosen.url
                ledger.changed(e, now=True)
            return chosen
