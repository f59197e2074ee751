"""The agent's download queue: orders from the coordinator, kept in order in
``data_dir/downloads.json`` and run by the ``Puller`` at most ``max_concurrent_downloads`` at a
time; what changed is kept until the coordinator acknowledges it (``progress``).

An order is idempotent by task id (and attempt): a repeated order is answered with the task as
it stands, so the coordinator may re-send orders whenever it is unsure (after either side
restarts). The queue file survives ``kill -9``; on start every unfinished entry is queued again
in its old order, and the new pull continues from Ollama's partial download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from fleetd.agent.download_entry import Entry
from fleetd.agent.placement import human
from fleetd.agent.puller import Failed, Puller
from fleetd.agent.runtime import save_json
from fleetd.agent.signals import Notice, Wakeup
from fleetd.config import AgentConfig
from fleetd.core.background import background
from fleetd.core.errors import StartupError
from fleetd.core.wire import TERMINAL, Order, TaskUpdate

log = logging.getLogger("fleetd.agent.downloads")

SAVE_INTERVAL_S = 1.0
KEEP_FINISHED = 500
"""Finished entries kept so that a repeated order is still answered with its outcome."""


class _QueueFile(msgspec.Struct):
    entries: list[Entry]


class DownloadQueue:
    """The entries in order, the pulls running for them, their file and what the coordinator
    has not acknowledged yet."""

    def __init__(self, config: AgentConfig, path: Path, puller: Puller) -> None:
        self.config = config
        self.path = path
        self.puller = puller
        self.entries: dict[str, Entry] = {}
        """Insertion order is queue order."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, int] = {}
        """Task id -> change number not yet acknowledged by the coordinator."""
        self._seq = 0
        self.urgent = Notice()
        """A task changed status (or server): report and save it at once."""
        self._save_now = self.urgent.listen(Wakeup())
        self._dirty = False
        self._saves = self._written = 0
        self._write_lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------

    def changed(self, e: Entry, *, now: bool = False) -> None:
        """``e`` changed; ``now``: its status or server did (save and report it at once)."""
        self._seq += 1
        self._pending[e.task_id] = self._seq
        self._dirty = True
        if now:
            self.urgent.fire()

    def unfinished(self) -> Iterator[Entry]:
        return (e for e in self.entries.values() if e.status not in TERMINAL)

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
                self.changed(e)
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
        self.changed(e, now=True)
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
            self.changed(e, now=True)
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
                self.changed(e, now=True)
                self.running[e.task_id] = asyncio.create_task(
                    self._run(e), name=f"download-{e.task_id}"
                )

    async def _run(self, e: Entry) -> None:
        try:
            await self.puller.pull(e, self)
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
        e.speed_bps, e.eta_s = 0.0, None
        self.changed(e, now=True)
        self.schedule()

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        """Read the queue from disk and start what it holds; on the way out stop the pulls
        (they resume on next start) and write the queue one last time. An unreadable file
        (not one with unreadable contents: that is moved aside) stops the agent's start."""
        try:
            await asyncio.to_thread(self.load)
        except OSError as err:
            raise StartupError(
                f"cannot read the download queue {self.path}: {err.strerror or err}"
            ) from None
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


DOWNLOADS = web.AppKey("downloads", DownloadQueue)
