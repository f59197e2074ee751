"""Download tasks on the coordinator: creating them, ordering agents, following their progress.

Tasks live in memory and in the store (written in batches every half second, and at once when
created). Every change is published as a ``task`` event. Orders go to an agent's API
(``POST {agent}/fleetd/tasks``), are idempotent there, and are re-sent whenever the
coordinator cannot be sure the agent has them: an order that failed, an agent that registered
again or came back from offline, a coordinator that restarted. Each agent's installed models
are kept as last reported, with the time they were read, so they can be shown when the agent
is slow or gone.

Automatic distribution: whenever an agent registers or comes back, every supported model it
lacks gets a task (unless one is already under way), and the rest are recorded as installed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Literal

import aiohttp
import msgspec
from aiohttp import web

from fleetd.coordinator.auth import TOKENS
from fleetd.coordinator.registry import REGISTRY, Registry
from fleetd.coordinator.settings import SETTINGS
from fleetd.core.background import Jobs, background
from fleetd.core.events import EVENTS, EventBus
from fleetd.core.http import CLIENT
from fleetd.core.names import InvalidModelName, normalize
from fleetd.core.ollama import error_message
from fleetd.core.store import STORE, Store
from fleetd.core.wire import (
    AGENT_PREFIX,
    TERMINAL,
    Agent,
    InstalledModel,
    ModelList,
    Order,
    ProgressReport,
    Task,
    TaskUpdate,
    next_revision,
    utcnow,
)

log = logging.getLogger("fleetd.distribution")

FLUSH_INTERVAL_S = 0.5
ORDER_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=3)
MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2.5, connect=2)
"""Short enough that ``GET /api/agents/{id}/models`` answers within 3 s from the cache."""
RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
ORPHAN_S = 3.0
"""A created task not dispatched within this time is ordered by the background loop."""

MatrixState = Literal["installed", "downloading", "queued", "failed", "missing"]


class AgentUnreachable(Exception):
    """The agent's API did not answer (or answered an error); the message says how."""


class Distribution:
    def __init__(
        self,
        store: Store,
        events: EventBus,
        registry: Registry,
        supported: list[str],
        session: aiohttp.ClientSession,
        agent_token: str,
    ) -> None:
        self.store = store
        self.events = events
        self.registry = registry
        self.supported = supported
        self.session = session
        self.agent_token = agent_token
        self.tasks: dict[str, Task] = {}
        self.installed: dict[str, dict[str, InstalledModel]] = {}
        self.as_of: dict[str, datetime] = {}
        self._dirty: set[str] = set()
        self._retry_at: dict[str, float] = {}
        """Task id -> monotonic time to send its order (again): it failed to reach the agent,
        or nobody dispatched the new task."""
        self._tries: dict[str, int] = {}
        self._ordering: set[str] = set()
        self._syncing: dict[str, asyncio.Lock] = {}
        self._order_locks: dict[str, asyncio.Lock] = {}
        self.jobs = Jobs("distribution")
        """Orders and cancels on their way, rows being written: cancelled at close."""
        self.on_task: list[Callable[[Task], None]] = []
        """Called on every change of a task (the gateway follows downloads under way)."""
        registry.on_online.append(self._agent_online)
        registry.on_offline.append(self._agent_offline)

    # -- persistence ---------------------------------------------------------------------

    async def load(self) -> None:
        for t in await self.store.load_tasks():
            self.tasks[t.id] = t
        for agent_id, models in (await self.store.load_installed()).items():
            self.installed[agent_id] = {m.name: m for m in models}
        self.as_of = await self.store.load_installed_as_of()
        active = [t for t in self.tasks.values() if t.status not in TERMINAL]
        for t in active:
            agent = self.registry.get(t.agent_id)
            if agent is None:
                self._finish(t, "failed", f"agent {t.agent_id} is no longer known")
            elif agent.status != "online":
                self._set_waiting(t)
        log.info("loaded %d task(s), %d unfinished", len(self.tasks), len(active))

    async def flush(self) -> None:
        if not self._dirty:
            return
        batch = [self.tasks[i] for i in self._dirty if i in self.tasks]
        self._dirty.clear()
        await self.store.save_tasks(batch)

    def _changed(self, t: Task) -> None:
        t.revision = next_revision()
        self._dirty.add(t.id)
        self.events.publish("task", t)
        for fn in self.on_task:
            fn(t)

    # -- background work -----------------------------------------------------------------

    async def launch(self, new: list[Task]) -> None:
        """Persist new (or retried) tasks, then order them, even if the caller is cancelled
        meanwhile (a client that hangs up must not leave tasks that never start)."""

        async def go() -> None:
            await self.store.save_tasks(new)
            for t in new:
                self.dispatch(t)

        await asyncio.shield(self.jobs.spawn(go()))

    async def run(self) -> None:
        """Flush dirty tasks, and re-send orders that did not reach their agent."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception:
                log.exception("writing tasks to the store failed; will retry")
            now = time.monotonic()
            for task_id, at in list(self._retry_at.items()):
                t = self.tasks.get(task_id)
                if t is None or t.status in TERMINAL:
                    self._retry_at.pop(task_id, None)
                elif at <= now and self._online(t.agent_id):
                    self.dispatch(t)

    async def close(self) -> None:
        await self.jobs.close()
        await self.flush()

    # -- talking to agents ---------------------------------------------------------------

    def _online(self, agent_id: str) -> bool:
        a = self.registry.get(agent_id)
        return a is not None and a.status == "online"

    async def _call(
        self,
        agent: Agent,
        method: str,
        path: str,
        payload: msgspec.Struct | None,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.agent_token}"}
        data = None
        if payload is not None:
            data = msgspec.json.encode(payload)
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, agent.url + AGENT_PREFIX + path, data=data, headers=headers, timeout=timeout
            ) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            reason = (
                "timed out" if isinstance(e, asyncio.TimeoutError) else str(e) or type(e).__name__
            )
            raise AgentUnreachable(
                f"agent {agent.name} ({agent.id}) at {agent.url}: {reason}"
            ) from None

    def dispatch(self, t: Task) -> None:
        """Send ``t``'s order in the background, unless one is already on its way."""
        if t.id in self._ordering or t.status in TERMINAL or not self._online(t.agent_id):
            return
        self._ordering.add(t.id)
        self._retry_at.pop(t.id, None)
        self.jobs.spawn(self._send_order(t))

    async def _send_order(self, t: Task) -> None:
        try:
            agent = self.registry.get(t.agent_id)
            if agent is None:
                return
            order = Order(task_id=t.id, model=t.model, redownload=t.redownload, attempt=t.attempt)
            # One order at a time per agent, so its queue keeps the order tasks were created in.
            lock = self._order_locks.setdefault(agent.id, asyncio.Lock())
            try:
                async with lock:
                    status, body = await self._call(agent, "POST", "/tasks", order, ORDER_TIMEOUT)
            except AgentUnreachable as e:
                self._order_later(t, str(e))
                return
            if status == 200:
                try:
                    update = msgspec.json.decode(body, type=TaskUpdate)
                except msgspec.DecodeError as e:
                    self._order_later(t, f"unreadable reply from agent {agent.id}: {e}")
                    return
                self._tries.pop(t.id, None)
                if not self.apply(agent.id, update):  # cancelled while the order was on its way
                    await self._send_cancel(t)
            elif 400 <= status < 500 and status not in (404, 408, 429):
                self._finish(
                    t, "failed", f"agent {agent.name} refused the order: {error_message(body)}"
                )
            else:
                self._order_later(t, f"agent {agent.id}: HTTP {status}: {error_message(body)}")
        finally:
            self._ordering.discard(t.id)

    def _order_later(self, t: Task, reason: str) -> None:
        n = self._tries.get(t.id, 0)
        self._tries[t.id] = n + 1
        delay = RETRY_BACKOFF_S[min(n, len(RETRY_BACKOFF_S) - 1)]
        self._retry_at[t.id] = time.monotonic() + delay
        log.warning(
            "order for task %s (%s) not delivered: %s; retrying in %.0fs",
            t.id,
            t.model,
            reason,
            delay,
        )

    async def _send_cancel(self, t: Task) -> None:
        agent = self.registry.get(t.agent_id)
        if agent is None or agent.status != "online":
            return  # it learns from the reply to its next progress report
        try:
            status, body = await self._call(
                agent, "POST", f"/tasks/{t.id}/cancel", None, ORDER_TIMEOUT
            )
        except AgentUnreachable as e:
            log.warning("cancel of task %s not delivered: %s", t.id, e)
            return
        if status not in (200, 404):
            log.warning(
                "cancel of task %s: agent said HTTP %d: %s", t.id, status, error_message(body)
            )

    async def fetch_models(self, agent: Agent) -> list[InstalledModel]:
        """The agent's installed models, asked of the agent itself; recorded on success."""
        status, body = await self._call(agent, "GET", "/models", None, MODELS_TIMEOUT)
        if status != 200:
            raise AgentUnreachable(
                f"agent {agent.name} ({agent.id}): HTTP {status}: {error_message(body)}"
            )
        try:
            models = msgspec.json.decode(body, type=ModelList).models
        except msgspec.DecodeError as e:
            raise AgentUnreachable(f"agent {agent.id}: unreadable model list: {e}") from None
        await self.record_installed(agent.id, models)
        return models

    # -- installed models ----------------------------------------------------------------

    async def record_installed(self, agent_id: str, models: list[InstalledModel]) -> None:
        by_name: dict[str, InstalledModel] = {}
        for m in models:
            try:
                m.name = normalize(m.name)
            except InvalidModelName:
                continue
            by_name[m.name] = m
        old = self.installed.get(agent_id)
        self.installed[agent_id] = by_name
        as_of = self.as_of[agent_id] = utcnow()
        if old is None or msgspec.json.encode(old) != msgspec.json.encode(by_name):
            await self.store.replace_installed(agent_id, by_name.values())
        await self.store.save_installed_as_of(agent_id, as_of)

    def is_installed(self, agent_id: str, model: str) -> bool:
        return model in self.installed.get(agent_id, {})

    # -- tasks ---------------------------------------------------------------------------

    def active_task(self, agent_id: str, model: str) -> Task | None:
        for t in self.tasks.values():
            if t.agent_id == agent_id and t.model == model and t.status not in TERMINAL:
                return t
        return None

    def create(self, agent: Agent, model: str, *, redownload: bool = False) -> Task:
        """A new task (``waiting`` when its agent is offline); ``launch`` it next."""
        t = Task(
            id=uuid.uuid4().hex[:16],
            agent_id=agent.id,
            agent_name=agent.name,
            model=model,
            redownload=redownload,
            status="queued" if agent.status == "online" else "waiting",
        )
        self.tasks[t.id] = t
        self._changed(t)
        self._retry_at[t.id] = time.monotonic() + ORPHAN_S  # in case dispatch never comes
        log.info("task %s: %s for agent %s (%s)", t.id, model, agent.name, agent.id)
        return t

    def apply(self, agent_id: str, u: TaskUpdate) -> bool:
        """Take an agent's word on one of its tasks; False when the agent must drop the task."""
        t = self.tasks.get(u.task_id)
        if t is None or t.agent_id != agent_id:
            return False
        if u.attempt < t.attempt:
            return True  # a late word on an earlier attempt
        if t.status in TERMINAL:
            return t.status != "cancelled" or u.status in TERMINAL
        t.completed_bytes, t.total_bytes = u.completed_bytes, u.total_bytes
        if u.total_bytes > 0:
            t.progress = round(min(1.0, u.completed_bytes / u.total_bytes), 4)
        t.speed_bps, t.eta_s = u.speed_bps, u.eta_s
        if u.source:
            t.source = u.source
        if u.status == "completed" or u.status == "failed" or u.status == "cancelled":
            self._finish(t, u.status, u.error)
            return True
        if u.status == "downloading" and t.started_at is None:
            t.started_at = utcnow()
        t.status = u.status
        self._changed(t)
        return True

    def _finish(
        self, t: Task, status: Literal["completed", "failed", "cancelled"], error: str | None
    ) -> None:
        t.status, t.error = status, error if status == "failed" else None
        t.finished_at = utcnow()
        t.speed_bps, t.eta_s = 0.0, None
        if status == "completed":
            t.progress = 1.0
            t.completed_bytes = max(t.completed_bytes, t.total_bytes)
            models = self.installed.setdefault(t.agent_id, {})
            if t.model not in models:
                models[t.model] = InstalledModel(
                    name=t.model, size=t.total_bytes, installed_at=t.finished_at
                )
                self.jobs.spawn(self.store.replace_installed(t.agent_id, list(models.values())))
        self._retry_at.pop(t.id, None)
        self._tries.pop(t.id, None)
        if status == "failed":
            log.warning("task %s: %s on agent %s failed: %s", t.id, t.model, t.agent_id, error)
        else:
            log.info("task %s: %s on agent %s %s", t.id, t.model, t.agent_id, status)
        self._changed(t)

    def _set_waiting(self, t: Task) -> None:
        t.status, t.speed_bps, t.eta_s = "waiting", 0.0, None
        self._changed(t)

    def cancel(self, t: Task) -> None:
        self._finish(t, "cancelled", None)
        self.jobs.spawn(self._send_cancel(t))

    def retry(self, t: Task) -> None:
        t.attempt += 1
        t.status = "queued" if self._online(t.agent_id) else "waiting"
        t.progress, t.completed_bytes, t.speed_bps, t.eta_s = 0.0, 0, 0.0, None
        t.error, t.started_at, t.finished_at = None, None, None
        self._changed(t)
        self._retry_at[t.id] = time.monotonic() + ORPHAN_S

    def ingest(self, agent_id: str, report: ProgressReport) -> list[str]:
        """Apply a progress report; returns the task ids the agent must cancel."""
        return [u.task_id for u in report.tasks if not self.apply(agent_id, u)]

    # -- agents coming and going ---------------------------------------------------------

    def _agent_online(self, agent: Agent) -> None:
        self.jobs.spawn(self.sync(agent.id, reported=self.registry.reported_models.get(agent.id)))

    def _agent_offline(self, agent: Agent) -> None:
        for t in self.tasks.values():
            if t.agent_id == agent.id and t.status not in TERMINAL:
                self._set_waiting(t)

    async def sync(
        self, agent_id: str, *, ask: bool = True, reported: list[InstalledModel] | None = None
    ) -> None:
        """Bring an agent that (re)appeared up to date: learn what it has (``reported`` in its
        registration; else with ``ask`` from the agent, else as last known), re-send the orders
        it may have missed, and order every supported model it lacks."""
        lock = self._syncing.setdefault(agent_id, asyncio.Lock())
        async with lock:
            agent = self.registry.get(agent_id)
            if agent is None or agent.status != "online":
                return
            if reported is not None:
                await self.record_installed(agent_id, reported)
            elif ask:
                try:
                    await self.fetch_models(agent)
                except AgentUnreachable as e:
                    log.warning("cannot read installed models (using last known): %s", e)
            for t in list(self.tasks.values()):
                if t.agent_id == agent_id and t.status not in TERMINAL:
                    self.dispatch(t)
            new = [
                self.create(agent, m)
                for m in self.supported
                if not self.is_installed(agent_id, m) and self.active_task(agent_id, m) is None
            ]
            if new:
                await self.launch(new)


DISTRIBUTION = web.AppKey("distribution", Distribution)


async def run_distribution(app: web.Application) -> AsyncIterator[None]:
    """Registered after the registry's entry (it needs the agents loaded) and the client's."""
    dist = Distribution(
        app[STORE],
        app[EVENTS],
        app[REGISTRY],
        app[SETTINGS].supported_models,
        app[CLIENT],
        app[TOKENS].agent,
    )
    app[DISTRIBUTION] = dist
    try:
        await dist.load()
        for agent in dist.registry.online():
            # The supported list may have changed while we were down; what agents hold is known.
            await dist.sync(agent.id, ask=False)
        async with background(dist.run(), "distribution"):
            yield
    finally:
        await dist.close()  # also when start-up fails after orders went out
