"""The agent's download queue: orders from the coordinator, run through the local Ollama's pull
stream at most ``max_concurrent_downloads`` at a time, persisted in ``data_dir``, with the disk
checked first and progress reported to the coordinator at least once a second.

An order is idempotent by task id (and attempt): a repeated order is answered with the task as
it stands, so the coordinator may re-send orders whenever it is unsure (after either side
restarts). The queue file survives ``kill -9``; on start every unfinished entry is queued again
in its old order, and the new pull continues from Ollama's partial download.

Which server of several ``[[agent.ollama]]`` gets a model is decided in ``placement``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from fleetd.agent.ollamas import LocalOllamas, LocalServer
from fleetd.agent.placement import NoRoom, human
from fleetd.agent.progress import REPORT_INTERVAL_S
from fleetd.agent.runtime import SupportedModels, save_json
from fleetd.agent.signals import Notice, Wakeup
from fleetd.config import AgentConfig
from fleetd.core.background import background
from fleetd.core.catalog import CatalogError, CatalogNotFound, manifest_size
from fleetd.core.ollama import OllamaError, PullProgress
from fleetd.core.wire import (
    TERMINAL,
    InstalledModel,
    Order,
    TaskStatus,
    TaskUpdate,
)

log = logging.getLogger("fleetd.agent.downloads")

SPEED_SAMPLE_S = REPORT_INTERVAL_S
SAVE_INTERVAL_S = 1.0
RETRIES = 3
"""Transient failures (Ollama unreachable, stream cut) are retried this many times, resuming."""
KEEP_FINISHED = 500
"""Finished entries kept so that a repeated order is still answered with its outcome."""
SPEED_ALPHA = 0.3


class Entry(msgspec.Struct, kw_only=True):
    """One task in the agent's queue, as persisted in ``data_dir/downloads.json``."""

    task_id: str
    model: str
    redownload: bool = False
    attempt: int = 0
    status: TaskStatus = "queued"
    completed_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    server: str = ""
    """The Ollama URL it downloads into, once chosen (a resumed pull must go to the same)."""
    deleted: bool = False
    """For a re-download: the old copy is already removed (never remove it twice)."""

    def update(self) -> TaskUpdate:
        return TaskUpdate(
            task_id=self.task_id,
            status=self.status,
            attempt=self.attempt,
            completed_bytes=self.completed_bytes,
            total_bytes=self.total_bytes,
            speed_bps=round(self.speed_bps, 1),
            eta_s=None if self.eta_s is None else round(self.eta_s, 1),
            error=self.error,
        )


class _QueueFile(msgspec.Struct):
    entries: list[Entry]


class Failed(Exception):
    """The task cannot succeed as things stand; the message is what the user sees."""


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
        if dt < SPEED_SAMPLE_S:
            return
        rate = max(0.0, (e.completed_bytes - self.done) / dt)
        e.speed_bps = (
            rate if e.speed_bps <= 0 else SPEED_ALPHA * rate + (1 - SPEED_ALPHA) * e.speed_bps
        )
        left = max(0, e.total_bytes - e.completed_bytes)
        e.eta_s = left / e.speed_bps if e.speed_bps > 0 else None
        self.t, self.done = now, e.completed_bytes


class Downloads:
    """The queue, its workers, its file and its reports to the coordinator."""

    def __init__(
        self,
        config: AgentConfig,
        session: aiohttp.ClientSession,
        path: Path,
        ollamas: LocalOllamas,
        supported: SupportedModels,
    ) -> None:
        self.config = config
        self.session = session
        self.ollamas = ollamas
        self.supported = supported
        self.path = path
        self.entries: dict[str, Entry] = {}
        """Insertion order is queue order."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self._meters: dict[str, _Meter] = {}
        self._pending: dict[str, int] = {}
        """Task id -> change number not yet acknowledged by the coordinator."""
        self._seq = 0
        self.urgent = Notice()
        """A task changed status (or server): report and save it at once."""
        self._save_now = self.urgent.listen(Wakeup())
        self._dirty = False
        self._saves = self._written = 0
        self._write_lock = threading.Lock()
        self._placing = asyncio.Lock()

    # -- state ---------------------------------------------------------------------------

    def _changed(self, e: Entry, *, now: bool = False) -> None:
        self._seq += 1
        self._pending[e.task_id] = self._seq
        self._dirty = True
        if now:
            self.urgent.fire()

    def unreported(self) -> tuple[dict[str, int], list[TaskUpdate]]:
        """What the coordinator has not acknowledged yet, running tasks always included (their
        progress moves on); pass the first item to ``acknowledge`` once it is delivered."""
        for task_id in self.running:
            self._pending.setdefault(task_id, self._seq)
        sent = dict(self._pending)
        return sent, [self.entries[i].update() for i in sent if i in self.entries]

    def acknowledge(self, sent: dict[str, int]) -> None:
        for task_id, seq in sent.items():
            if self._pending.get(task_id) == seq:
                del self._pending[task_id]

    def load(self) -> None:
        """Read the persisted queue; unfinished entries are queued again. Blocking."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            entries = msgspec.json.decode(data, type=_QueueFile).entries
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            broken = self.path.with_suffix(".broken")
            self.path.replace(broken)
            log.error(
                "download queue %s unreadable (%s); moved aside to %s", self.path, err, broken
            )
            return
        for e in entries:
            if e.status not in TERMINAL:
                e.status, e.speed_bps, e.eta_s = "queued", 0.0, None
                self._changed(e)
            self.entries[e.task_id] = e
        unfinished = sum(1 for e in entries if e.status not in TERMINAL)
        if unfinished:
            log.info("resuming %d unfinished download(s) from %s", unfinished, self.path)

    def _snapshot(self) -> Any:
        finished = [e for e in self.entries.values() if e.status in TERMINAL]
        drop = {e.task_id for e in finished[: max(0, len(finished) - KEEP_FINISHED)]}
        for task_id in drop:
            del self.entries[task_id]
        return msgspec.to_builtins(_QueueFile(list(self.entries.values())))

    async def save(self) -> None:
        self._dirty = False
        self._saves += 1
        await asyncio.to_thread(self._write, self._saves, self._snapshot())

    def _write(self, version: int, data: Any) -> None:
        """Blocking. A write cut short by cancellation may still be running in its thread:
        never let it overwrite a newer snapshot."""
        with self._write_lock:
            if version > self._written:
                save_json(self.path, data)
                self._written = version

    # -- orders --------------------------------------------------------------------------

    def submit(self, order: Order) -> TaskUpdate:
        """Queue an order, or answer a repeated one with the task as it stands."""
        e = self.entries.get(order.task_id)
        if e is not None and (order.attempt <= e.attempt or e.status not in TERMINAL):
            e.attempt = max(e.attempt, order.attempt)
            return e.update()
        if e is not None:  # a retry of a finished task: queue it again at the end
            del self.entries[order.task_id]
        e = Entry(
            task_id=order.task_id,
            model=order.model,
            redownload=order.redownload,
            attempt=order.attempt,
            completed_bytes=e.completed_bytes if e is not None and e.status != "completed" else 0,
            server=e.server if e is not None else "",
        )
        self.entries[e.task_id] = e
        log.info(
            "task %s: %s queued%s", e.task_id, e.model, " (re-download)" if e.redownload else ""
        )
        self._changed(e, now=True)
        self.schedule()
        return e.update()

    def cancel(self, task_id: str) -> TaskUpdate | None:
        e = self.entries.get(task_id)
        if e is None:
            return None
        if e.status not in TERMINAL:
            e.status, e.speed_bps, e.eta_s = "cancelled", 0.0, None
            task = self.running.get(task_id)
            if task is not None:
                task.cancel()
            log.info("task %s: %s cancelled", task_id, e.model)
            self._changed(e, now=True)
            self.schedule()
        return e.update()

    def schedule(self) -> None:
        """Start queued entries, in order, while download slots are free."""
        limit = self.config.max_concurrent_downloads
        for e in list(self.entries.values()):
            if len(self.running) >= limit:
                return
            if e.status == "queued":
                e.status = "downloading"
                self._changed(e, now=True)
                self.running[e.task_id] = asyncio.create_task(
                    self._run(e), name=f"download-{e.task_id}"
                )

    async def _run(self, e: Entry) -> None:
        try:
            await self._download(e)
        except asyncio.CancelledError:
            if e.status != "cancelled":
                raise  # shutting down: the entry stays unfinished and resumes on next start
        except Failed as err:
            e.status, e.error = "failed", str(err)
            log.warning("task %s: %s failed: %s", e.task_id, e.model, err)
        except Exception as err:
            e.status, e.error = "failed", f"internal error: {err!r}"
            log.exception("task %s: %s failed unexpectedly", e.task_id, e.model)
        else:
            e.status, e.error = "completed", None
            e.completed_bytes = max(e.completed_bytes, e.total_bytes)
            log.info("task %s: %s downloaded (%s)", e.task_id, e.model, human(e.total_bytes))
        finally:
            self.running.pop(e.task_id, None)
            self._meters.pop(e.task_id, None)
        e.speed_bps, e.eta_s = 0.0, None
        self._changed(e, now=True)
        self.schedule()

    async def _download(self, e: Entry) -> None:
        """Try, and retry transient failures with backoff; each retry resumes the partial."""
        for attempt in range(RETRIES + 1):
            try:
                await self._attempt(e)
                return
            except OllamaError as err:
                if not err.transient:
                    raise Failed(str(err)) from None
                if attempt == RETRIES:
                    raise Failed(f"{err} (gave up after {RETRIES} retries)") from None
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
            self._changed(e)
            await asyncio.sleep(delay)

    async def _attempt(self, e: Entry) -> None:
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
            e.total_bytes = await manifest_size(self.session, self.config.registry_url, e.model)
            self._changed(e)
        freed = 0 if e.deleted or not holders else tags[holders[0]][e.model].size
        server = await self._place(e, tags, freed)
        if e.redownload and not e.deleted:
            await self.ollamas.delete(e.model, holders)
            e.deleted = True
            self._changed(e, now=True)
            log.info("task %s: removed %s before downloading it again", e.task_id, e.model)
        meter = self._meters.setdefault(e.task_id, _Meter())

        def progress(p: PullProgress) -> None:
            e.total_bytes = max(e.total_bytes, p.total)
            e.completed_bytes = min(p.completed, e.total_bytes)
            meter.sample(e)
            self._changed(e)

        await server.ollama.pull(e.model, progress)
        self.ollamas.pulled()

    async def _place(
        self, e: Entry, tags: dict[str, dict[str, InstalledModel]], freed: int
    ) -> LocalServer:
        """Choose (once) the server for ``e`` among those with room; fail naming the shortfall."""
        async with self._placing:  # two placements at once would both pick the emptiest
            models_on = {url: set(models) for url, models in tags.items()}
            for other in self.entries.values():
                if other.status not in TERMINAL and other.server in models_on:
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
                self._changed(e, now=True)
            return chosen

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        """Read the queue from disk and start what it holds; on the way out stop the pulls
        (they resume on next start) and write the queue one last time."""
        await asyncio.to_thread(self.load)
        try:
            async with background(self._run_saver(), "download-saver"):
                self.schedule()
                yield
        finally:
            await self._close()

    async def _run_saver(self) -> None:
        """Unfinished state reaches disk within a second (at once for a change of status)."""
        while True:
            await self._save_now.wait(SAVE_INTERVAL_S)
            if self._dirty:
                try:
                    await self.save()
                except OSError as err:
                    log.error("cannot write the download queue %s: %s", self.path, err)

    async def _close(self) -> None:
        """Stop running pulls without marking them finished, and write the queue one last time."""
        tasks = list(self.running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.save()
        except OSError as err:
            log.error("cannot write the download queue %s: %s", self.path, err)
        if tasks:
            log.info("stopped %d running download(s); they resume on next start", len(tasks))


DOWNLOADS = web.AppKey("downloads", Downloads)
