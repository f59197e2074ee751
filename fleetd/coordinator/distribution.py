"""Download tasks on the coordinator: creating them, taking the agents' word on them,
cancelling and retrying, and automatic distribution.

Its parts: ``task_state`` (a task's transitions), ``task_table`` (tasks in memory, batched
writes), ``orders`` (delivery of orders and cancels to agents), ``planning`` (who gets a
task). Every change of a task is published as a ``task`` event and passed to the ``on_task``
listeners. What each agent has installed is the inventory's: completed tasks and the lists
read from agents go there.

Automatic distribution: whenever an agent registers or comes back, every supported model it
lacks gets a task (unless one is already under way), and its unfinished tasks are ordered
again (it may have missed them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

import aiohttp
from aiohttp import web

from fleetd.coordinator import task_state
from fleetd.coordinator.auth import TOKENS
from fleetd.coordinator.inventory import INVENTORY, Inventory
from fleetd.coordinator.model_sets import MODEL_SETS
from fleetd.coordinator.orders import AgentUnreachable, Orders
from fleetd.coordinator.planning import plan
from fleetd.coordinator.registry import REGISTRY, Registry
from fleetd.coordinator.task_table import TaskTable
from fleetd.coordinator.vram import MODEL_SIZES, fitting_now
from fleetd.core.background import Jobs, background
from fleetd.core.events import EVENTS, EventBus
from fleetd.core.http import CLIENT
from fleetd.core.store import STORE, Store, StoreUnavailable
from fleetd.core.wire import (
    TERMINAL,
    Agent,
    ProgressReport,
    Task,
    TaskKind,
    TaskUpdate,
    observe_revision,
)

log = logging.getLogger("fleetd.distribution")

FLUSH_INTERVAL_S = 0.5


class Distribution:
    def __init__(
        self,
        store: Store,
        events: EventBus,
        registry: Registry,
        inventory: Inventory,
        supported: list[str],
        session: aiohttp.ClientSession,
        agent_token: Callable[[], str],
        wanted: Callable[[Agent], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.events = events
        self.registry = registry
        self.inventory = inventory
        self.supported = supported
        """Every supported or placed model (the matrix lists them first)."""
        self.wanted = wanted
        """The models an agent must hold that may be ordered there automatically (its
        placement or the supported list, less what cannot fit its GPUs)."""
        self.tasks = TaskTable(store)
        self.orders = Orders(registry, session, agent_token, self.apply, self._refused)
        self.jobs = Jobs("distribution")
        self._syncing: dict[str, asyncio.Lock] = {}
        self.on_task: list[Callable[[Task], None]] = []
        """Called on every change of a task (the gateway follows downloads under way)."""
        # Set by the cluster (cluster.py) when coordinators share a database:
        self.leading = True
        """Whether this coordinator re-sends orders that did not arrive (one at a time)."""
        self.tasks_by_id: Callable[[list[str]], Awaitable[list[Task]]] | None = None
        """Reads tasks from the database: those another coordinator created just now."""
        registry.on_online.append(self._agent_online)
        registry.on_offline.append(self._agent_offline)
        registry.on_forget.append(self._agent_forgotten)
        registry.on_online_elsewhere.append(self._agent_online_elsewhere)

    # -- lifecycle -----------------------------------------------------------------------

    async def load(self) -> None:
        active = await self.tasks.load()
        for t in active:
            agent = self.registry.get(t.agent_id)
            if agent is None:
                self._end(t, "failed", f"agent {t.agent_id} is no longer known")
            elif agent.status != "online":
                task_state.wait(t)
                self._changed(t)
        log.info("loaded %d task(s), %d unfinished", len(self.tasks), len(active))

    async def run(self) -> None:
        """Write changed tasks, and re-send orders that did not reach their agent."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.tasks.flush()
            except StoreUnavailable:
                pass  # the store said why; the tasks stay dirty until it can write
            except Exception:
                log.exception("writing tasks to the store failed; will retry")
            if self.leading:
                self.orders.resend_due(self.tasks.get)

    async def close(self) -> None:
        await self.jobs.close()
        await self.orders.jobs.close()
        await self.tasks.flush()

    def _changed(self, t: Task) -> None:
        self.tasks.changed(t)
        self.events.publish("task", t)
        for fn in self.on_task:
            fn(t)

    # -- tasks ---------------------------------------------------------------------------

    def active_for(self, model: str) -> Mapping[str, Task]:
        """Agent id -> its unfinished task for ``model``."""
        return self.tasks.active_for(model)

    def create(
        self, agent: Agent, model: str, *, redownload: bool = False, kind: TaskKind = "download"
    ) -> Task:
        """A new task (``waiting`` when its agent is offline); ``launch`` it next."""
        t = task_state.new(agent, model, redownload=redownload, kind=kind)
        self.tasks.add(t)
        self._changed(t)
        self.orders.expect(t)  # in case dispatch never comes
        log.info("task %s: %s %s for agent %s (%s)", t.id, kind, model, agent.name, agent.id)
        return t

    async def launch(self, new: list[Task]) -> None:
        """Persist new (or retried) tasks, then order them, even if the caller is cancelled
        meanwhile (a client that hangs up must not leave tasks that never start)."""

        async def go() -> None:
            await self.tasks.save_new(new)
            for t in new:
                self.orders.dispatch(t)

        await asyncio.shield(self.jobs.spawn(go()))

    def apply(self, agent_id: str, u: TaskUpdate) -> bool:
        """Take an agent's word on one of its tasks; False when the agent must drop the task."""
        t = self.tasks.get(u.task_id)
        if t is None or t.agent_id != agent_id:
            return False
        verdict = task_state.take(t, u)
        if verdict == "ended":
            self._ended(t)
        elif verdict == "progress":
            if t.status == "downloading":
                self.orders.forget(t.id)  # the agent has the order: nothing left to deliver
            self._changed(t)
        return verdict != "drop"

    def ingest(self, agent_id: str, report: ProgressReport) -> list[str]:
        """Apply a progress report; returns the task ids the agent must cancel."""
        return [u.task_id for u in report.tasks if not self.apply(agent_id, u)]

    def _end(self, t: Task, status: task_state.Ending, error: str | None) -> None:
        task_state.end(t, status, error)
        self._ended(t)

    def _ended(self, t: Task) -> None:
        if t.status == "completed" and t.kind == "delete":
            self.inventory.deleted(t.agent_id, t.model)
        elif t.status == "completed":
            # Before the task's change is published: its listeners see the model installed.
            self.inventory.completed(t.agent_id, t.model, t.total_bytes, t.finished_at)
        self.orders.forget(t.id)
        if t.status == "failed":
            log.warning("task %s: %s on agent %s failed: %s", t.id, t.model, t.agent_id, t.error)
        else:
            log.info("task %s: %s on agent %s %s", t.id, t.model, t.agent_id, t.status)
        self._changed(t)

    def _refused(self, t: Task, reason: str) -> None:
        if t.status not in TERMINAL:
            self._end(t, "failed", reason)

    def cancel(self, t: Task) -> None:
        self._end(t, "cancelled", None)
        self.orders.cancel(t)

    def retry(self, t: Task) -> None:
        """A failed or cancelled task runs again as its next attempt; ``launch`` it next."""
        a = self.registry.get(t.agent_id)
        task_state.retry(t, online=a is not None and a.status == "online")
        self._changed(t)
        self.orders.expect(t)

    # -- other coordinators' news (cluster.py) ---------------------------------------------

    def apply_remote(self, copy: Task) -> None:
        """Another coordinator's copy of a task, read from the database: taken when newer
        than ours, and published here. The leader makes sure a queued task's order arrives
        (its creator may die before delivering it; orders are idempotent); a coordinator that
        becomes the leader later does the same for every queued or waiting task
        (``take_over``). The inventory hears of a completion from the other coordinator's
        own write."""
        observe_revision(copy.revision)
        t = self.tasks.get(copy.id)
        if t is not None and t.revision >= copy.revision:
            return
        if t is None:
            t = copy
        else:
            for field in copy.__struct_fields__:
                setattr(t, field, getattr(copy, field))
        self.tasks.taken(t)
        if t.status == "queued" and self.leading:
            self.orders.expect(t)
        elif t.status in TERMINAL or t.status == "downloading":
            self.orders.forget(t.id)
        self.events.publish("task", t)
        for fn in self.on_task:
            fn(t)

    def take_over(self) -> None:
        """This coordinator now leads: every queued or waiting task is ordered again shortly
        once its agent is online, as after a restart (the coordinator that created it, or
        that saw its agent come back, may have died before delivering it)."""
        self._expect_unsent(self.tasks.values())

    async def catch_up(self, report: ProgressReport) -> None:
        """Tasks in ``report`` this coordinator has not heard of yet (just created through
        another one) are read from the database, lest the agent be told to drop them."""
        unknown = [u.task_id for u in report.tasks if self.tasks.get(u.task_id) is None]
        if unknown and self.tasks_by_id is not None:
            for t in await self.tasks_by_id(unknown):
                self.apply_remote(t)

    # -- agents coming and going ---------------------------------------------------------

    async def fetch_models(self, agent: Agent) -> None:
        """Ask the agent itself what it has installed, for the inventory."""
        self.inventory.report(agent.id, await self.orders.fetch_models(agent))

    def _agent_online(self, agent: Agent) -> None:
        # A registration reports the agent's list right after this (see agents_api): the
        # sync asks the agent only if no list came in between.
        self.jobs.spawn(self.sync(agent.id, since=self.inventory.reports(agent.id)))

    def _agent_online_elsewhere(self, agent: Agent) -> None:
        # The coordinator the agent came back through re-sends its orders; the leader does
        # too unless the agent reports them under way first, lest that coordinator die before
        # (orders are idempotent).
        if self.leading:
            self._expect_unsent(self.tasks.active_of(agent.id))

    def _expect_unsent(self, tasks: Iterable[Task]) -> None:
        """Tasks whose agent has not said it took them are ordered once it is online."""
        for t in tasks:
            if t.status in ("queued", "waiting"):
                self.orders.expect(t)

    def _agent_forgotten(self, agent: Agent) -> None:
        for t in self.tasks.active_of(agent.id):
            self._end(t, "cancelled", None)
        self.inventory.forget(agent.id)

    async def remove(self, tasks: list[Task]) -> None:
        """Forget finished tasks, in memory and in the store."""
        for t in tasks:
            self.events.publish("task_removed", {"id": t.id})
        await self.tasks.remove(tasks)

    def resync(self) -> None:
        """The models agents must hold changed: order what each online one lacks."""
        for agent in self.registry.online():
            self.jobs.spawn(self.sync(agent.id, ask=False))

    def _agent_offline(self, agent: Agent) -> None:
        for t in self.tasks.active_of(agent.id):
            task_state.wait(t)
            self._changed(t)

    async def sync(self, agent_id: str, *, ask: bool = True, since: int | None = None) -> None:
        """Bring an agent that (re)appeared up to date: learn what it has (with ``ask`` from
        the agent, unless it reported its list since the inventory's count ``since``; else
        as last known), re-send the orders it may have missed, and order every supported
        model it lacks."""
        async with self._syncing.setdefault(agent_id, asyncio.Lock()):
            agent = self.registry.get(agent_id)
            if agent is None or agent.status != "online":
                return
            if ask and (since is None or self.inventory.reports(agent_id) == since):
                try:
                    await self.fetch_models(agent)
                except AgentUnreachable as e:
                    log.warning("cannot read installed models (using last known): %s", e)
            for t in self.tasks.active_of(agent_id):
                self.orders.dispatch(t)
            if agent.draining:
                return  # nothing new while drained; undrain syncs again
            wanted = self.supported if self.wanted is None else await self.wanted(agent)
            # Most syncs (a fleet registering at once) find every model there or on its way:
            # only the others are planned.
            lacking = [
                m
                for m in wanted
                if not self.inventory.has(agent_id, m) and agent_id not in self.tasks.active_for(m)
            ]
            new = [
                self.create(a, m)
                for m in lacking
                for a in plan(
                    m,
                    [agent],
                    active=self.tasks.active_for(m),
                    holders=self.inventory.agents_with(m),
                    if_installed="skip",
                ).create
            ]
            if new:
                await self.launch(new)


DISTRIBUTION = web.AppKey("distribution", Distribution)


async def run_distribution(app: web.Application) -> AsyncIterator[None]:
    """Registered after the entries of the registry (it needs the agents loaded), the
    inventory and the client."""
    sets, sizes, tokens = app[MODEL_SETS], app[MODEL_SIZES], app[TOKENS]

    async def wanted(agent: Agent) -> list[str]:
        return await fitting_now(agent, sets.for_agent(agent), sizes)

    dist = Distribution(
        app[STORE],
        app[EVENTS],
        app[REGISTRY],
        app[INVENTORY],
        sets.everything(),
        app[CLIENT],
        lambda: tokens.agent,
        wanted,
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
