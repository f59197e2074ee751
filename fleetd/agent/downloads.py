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
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from fleetd.agent import via_mirror
from fleetd.agent.placement import NoRoom, Server, choose, human
from fleetd.agent.progress import REPORT_INTERVAL_S, Reporter
from fleetd.agent.runtime import RUNTIME, Runtime, save_json
from fleetd.config import expand
from fleetd.core.catalog import CatalogError, CatalogNotFound
from fleetd.core.http import CLIENT
from fleetd.core.ollama import Ollama, OllamaError, PullProgress
from fleetd.core.wire import (
    ERROR_MAX,
    MESSAGE_MAX,
    TERMINAL,
    InstalledModel,
    Order,
    TaskStatus,
    TaskUpdate,
    clip,
)

log = logging.getLogger("fleetd.agent.downloads")

SPEED_SAMPLE_S = REPORT_INTERVAL_S
SAVE_INTERVAL_S = 1.0
RETRIES = 3
STALL_MIN_BYTES = 1 << 20
"""Less than this in ``download_stall_timeout_s`` is no progress (a trickle, e.g. 1 byte/s)."""
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
    source: str = ""
    """Where it pulls from: the coordinator's mirror, or the registry directly and why."""

    def update(self) -> TaskUpdate:
        return TaskUpdate(
            task_id=self.task_id,
            status=self.status,
            attempt=self.attempt,
            # Ollama's sums can pass the total for a moment; the coordinator refuses that.
            completed_bytes=min(self.completed_bytes, self.total_bytes or self.completed_bytes),
            total_bytes=self.total_bytes,
            speed_bps=round(self.speed_bps, 1),
            eta_s=None if self.eta_s is None else round(self.eta_s, 1),
            error=None if self.error is None else clip(self.error, ERROR_MAX),
            source=clip(self.source, MESSAGE_MAX),
        )


class _QueueFile(msgspec.Struct):
    entries: list[Entry]


class Failed(Exception):
    """The task cannot succeed as things stand; the message is what the user sees."""


class Stalled(OllamaError):
    """The pull made (almost) no progress for ``download_stall_timeout_s``; retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


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

    def __init__(self, rt: Runtime, session: aiohttp.ClientSession) -> None:
        self.rt = rt
        self.session = session
        self.servers = [
            Server(Ollama(session, s.url), expand(s.models_dir)) for s in rt.config.ollama
        ]
        self.path = rt.data_dir / "downloads.json"
        self.entries: dict[str, Entry] = {}
        """Insertion order is queue order."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self._meters: dict[str, _Meter] = {}
        self._pending: dict[str, int] = {}
        """Task id -> change number not yet acknowledged by the coordinator."""
        self._seq = 0
        self.models_changed = True
        """The installed models changed since the coordinator last heard of them."""
        self.report_now = asyncio.Event()
        self._save_now = asyncio.Event()
        self._dirty = False
        self._saves = self._written = 0
        self._write_lock = threading.Lock()
        self._placing = asyncio.Lock()
        self.on_installed: list[Callable[[], None]] = []
        """Called when the installed models change (the residency keeper listens)."""

    # -- state ---------------------------------------------------------------------------

    def _changed(self, e: Entry, *, now: bool = False) -> None:
        self._seq += 1
        self._pending[e.task_id] = self._seq
        self._dirty = True
        if now:
            self._save_now.set()
            self.report_now.set()

    def _installed_changed(self) -> None:
        self.models_changed = True
        for fn in self.on_installed:
            fn()

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
        limit = self.rt.config.max_concurrent_downloads
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
                    if isinstance(err, Stalled):
                        raise Failed(f"{err}, {RETRIES + 1} tries") from None
                    raise Failed(f"{err} (gave up after {RETRIES} retries)") from None
                if attempt == RETRIES - 1 and via_mirror.uses_mirror(e, self.rt.mirror_url):
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
            self._changed(e)
            await asyncio.sleep(delay)

    async def _tags(self) -> dict[str, dict[str, InstalledModel]]:
        """Installed models per usable server URL; when none is usable, the last reason why."""
        out: dict[str, dict[str, InstalledModel]] = {}
        last: OllamaError | None = None
        for s in self.servers:
            try:
                out[s.url] = {m.name: m for m in await s.ollama.tags()}
            except OllamaError as err:
                log.warning("%s", err)
                last = err
        if not out and last is not None:
            raise OllamaError(f"no usable Ollama server on this agent: {last}", transient=True)
        return out

    async def _attempt(self, e: Entry) -> None:
        await via_mirror.settled(self.rt.mirror_known)
        tags = await self._tags()
        holders = [url for url, models in tags.items() if e.model in models]
        if holders and not e.redownload:
            e.total_bytes = e.completed_bytes = tags[holders[0]][e.model].size
            return
        if e.total_bytes <= 0:
            e.total_bytes = await via_mirror.size(
                self.session, e, self.rt.mirror_url, self.rt.config.registry_url
            )
            self._changed(e)
        freed = 0 if e.deleted or not holders else tags[holders[0]][e.model].size
        server = await self._place(e, tags, freed)
        if e.redownload and not e.deleted:
            for s in self.servers:
                if s.url in holders:
                    await s.ollama.delete(e.model)
            e.deleted = True
            self._changed(e, now=True)
            self._installed_changed()
            log.info("task %s: removed %s before downloading it again", e.task_id, e.model)
        meter = self._meters.setdefault(e.task_id, _Meter())

        def progress(p: PullProgress) -> None:
            e.total_bytes = max(e.total_bytes, p.total)
            e.completed_bytes = min(p.completed, e.total_bytes)
            meter.sample(e)
            self._changed(e)

        await self._watched(via_mirror.pull(server.ollama, e, self.rt.mirror_url, progress), e)
        self._installed_changed()

    async def _watched(self, pull: Coroutine[Any, Any, None], e: Entry) -> None:
        """Run ``pull``, ended as ``Stalled`` when ``e`` gains less than ``STALL_MIN_BYTES``
        in ``download_stall_timeout_s``: Ollama keeps sending progress lines for a download
        that moves no byte (or one a second), so a silent socket is not the only stall."""
        window = self.rt.config.download_stall_timeout_s
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
        self, e: Entry, tags: dict[str, dict[str, InstalledModel]], freed: int
    ) -> Server:
        """Choose (once) the server for ``e`` among those with room; fail naming the shortfall."""
        async with self._placing:  # two placements at once would both pick the emptiest
            models_on = {url: set(models) for url, models in tags.items()}
            for other in self.entries.values():
                if other.status not in TERMINAL and other.server in models_on:
                    models_on[other.server].add(other.model)
            try:
                chosen = await choose(
                    self.servers,
                    e.model,
                    max(0, e.total_bytes - e.completed_bytes - freed),
                    self.rt.config.disk_margin_bytes,
                    pinned=e.server,
                    models_on=models_on,
                    supported=self.rt.supported_models,
                )
            except NoRoom as err:
                raise Failed(str(err)) from None
            if e.server != chosen.url:
                e.server = chosen.url
                self._changed(e, now=True)
            return chosen

    async def installed(self) -> list[InstalledModel]:
        """Every model installed on this agent's servers (the first server's copy wins)."""
        seen: dict[str, InstalledModel] = {}
        for s in self.servers:
            for m in await s.ollama.tags():
                seen.setdefault(m.name, m)
        return list(seen.values())

    # -- background loops ----------------------------------------------------------------

    async def run_saver(self) -> None:
        """Unfinished state reaches disk within a second (at once for a change of status)."""
        while True:
            try:
                await asyncio.wait_for(self._save_now.wait(), timeout=SAVE_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self._save_now.clear()
            if self._dirty:
                try:
                    await self.save()
                except OSError as err:
                    log.error("cannot write the download queue %s: %s", self.path, err)

    async def close(self) -> None:
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


async def run_downloads(app: web.Application) -> AsyncIterator[None]:
    dl = Downloads(app[RUNTIME], app[CLIENT])
    app[DOWNLOADS] = dl
    await asyncio.to_thread(dl.load)
    reporter = Reporter(dl.rt, dl.session, dl)
    loops = [
        asyncio.create_task(dl.run_saver(), name="download-saver"),
        asyncio.create_task(reporter.run(), name="download-reporter"),
    ]
    dl.schedule()
    yield
    for t in loops:
        t.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    await dl.close()
