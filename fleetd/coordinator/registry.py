"""The agents the coordinator knows: registration, heartbeats, going offline, listeners."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from fleetd.coordinator.agent_rows import AgentRows
from fleetd.coordinator.liveness import Liveness
from fleetd.coordinator.settings import SETTINGS
from fleetd.core.background import Jobs, background
from fleetd.core.events import EVENTS, EventBus
from fleetd.core.store import STORE, Store, StoreUnavailable
from fleetd.core.wire import Agent, Heartbeat, Registration, next_revision, observe_revision, utcnow

log = logging.getLogger("fleetd.registry")

Listener = Callable[[Agent], None]


class Registry:
    """Agents in memory, read by the balancer, gate and API, who react through listeners; in the
    store written in batches: registration and status changes at once, heartbeat figures lazily."""

    def __init__(
        self,
        store: Store,
        events: EventBus,
        heartbeat_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.events = events
        self.timeout = heartbeat_timeout_s
        self.liveness = Liveness(heartbeat_timeout_s, clock)
        self.agents: dict[str, Agent] = {}
        self._by_url: dict[str, str] = {}
        self._by_instance: dict[str, str] = {}
        self.on_online: list[Listener] = []
        """Called when an agent registers or comes back from offline."""
        self.on_offline: list[Listener] = []
        self.on_offline_elsewhere: list[Listener] = []
        """Called when another coordinator judged an agent offline (cluster.py)."""
        self.on_online_elsewhere: list[Listener] = []
        """Called when an agent known here came back through another coordinator (a new one's
        tasks arrive as their own news)."""
        self.on_change: list[Listener] = []
        """Called on every change, heartbeats included (balancer, gate)."""
        self.on_forget: list[Listener] = []
        """Called when an operator removed an agent (after the offline listeners)."""
        self.on_silent: list[Listener] = []
        """Called when an online agent has missed two heartbeats (it stays online until the
        timeout; its next contact is an ``on_change``)."""
        self.heartbeats = 0
        self.jobs = Jobs("registry")
        self.rows = AgentRows(store, self.jobs)
        # Set by the cluster (cluster.py) when coordinators share a database:
        self.arbiter: Callable[[Agent], Awaitable[Agent]] | None = None
        """Given a new agent, the one the database already holds for its instance (or URL),
        else the new one, recorded: registrations agree on ids across coordinators."""
        self.leading = True
        """Whether this coordinator runs the offline sweep (one coordinator at a time)."""
        self.heard_within: Callable[[list[str], float], Awaitable[set[str]]] | None = None
        """Which of these agents some coordinator heard from lately (asked before sweeping)."""
        self.contacted: set[str] | None = None
        """Agents heard from here since the cluster last wrote their contact (None: alone)."""

    async def load(self) -> None:
        for a in await self.store.load_agents():
            self._index(a)
            if a.status == "online":
                # A restart is not the agents' fault: give each a full timeout to check in.
                self.liveness.heard(a.id, a.heartbeat_interval_s)
        log.info("loaded %d agent(s) from the store", len(self.agents))

    def _index(self, a: Agent) -> None:
        self.agents[a.id] = a
        self._by_url[a.url] = a.id
        if a.instance_id:
            self._by_instance[a.instance_id] = a.id

    def get(self, agent_id: str) -> Agent | None:
        return self.agents.get(agent_id)

    def online(self) -> list[Agent]:
        return [a for a in self.agents.values() if a.status == "online"]

    def _notify(self, listeners: list[Listener], a: Agent) -> None:
        for fn in listeners:
            try:
                fn(a)
            except Exception:
                log.exception("listener %r failed for agent %s", fn, a.id)

    def _changed(self, a: Agent, persist: bool) -> None:
        a.revision = next_revision()
        if persist:
            self.rows.dirty.add(a.id)
        self.events.publish("agent", a)
        self._notify(self.on_change, a)

    async def register(self, reg: Registration, total_models: int) -> Agent:
        """Same instance id or same URL → same agent, whatever else changed.

        A fresh or returning agent is ``initializing`` with ``total_models`` to go until its
        first heartbeat says otherwise. It is written before the answer (503 when the store
        cannot), in one write shared by every registration that arrives meanwhile, which logs
        it (agent_rows.py).
        """
        agent_id = (reg.instance_id and self._by_instance.get(reg.instance_id)) or self._by_url.get(
            reg.url
        )
        fresh = self._new(reg)
        if agent_id is None and self.arbiter is not None:
            found = await self.arbiter(fresh)
            if found.id != fresh.id:  # registered through another coordinator
                self.apply_remote(found)
                agent_id = found.id
        was_online = False
        if agent_id is not None:
            a = self.agents[agent_id]
            was_online = a.status == "online"
            if a.url != reg.url:
                self._by_url.pop(a.url, None)
            a.name, a.url, a.gpus = reg.name, reg.url, reg.gpus
            a.version, a.ollama_versions = reg.version, reg.ollama_versions
            a.labels = reg.labels
            if reg.heartbeat_interval_s:
                a.heartbeat_interval_s = reg.heartbeat_interval_s
            if reg.instance_id:
                a.instance_id = reg.instance_id
        else:
            a = fresh
        if reg.margin_bytes is not None:
            a.margin_bytes = reg.margin_bytes
        a.status = "online"
        a.last_seen = utcnow()
        if not was_online:
            a.initializing = True
            a.total_models = total_models
        self._index(a)
        self._contact(a.id)
        a.revision = next_revision()  # the copy other coordinators read is the newer one
        await self.rows.registered(a)
        self._changed(a, persist=False)
        self._notify(self.on_online, a)
        return a

    @staticmethod
    def _new(reg: Registration) -> Agent:
        a = Agent(
            id=os.urandom(6).hex(),  # 12 random hex digits; a uuid4 object costs 5x more
            name=reg.name,
            url=reg.url,
            gpus=reg.gpus,
            instance_id=reg.instance_id,
            version=reg.version,
            ollama_versions=reg.ollama_versions,
            labels=reg.labels,
        )
        if reg.heartbeat_interval_s:
            a.heartbeat_interval_s = reg.heartbeat_interval_s
        return a

    def heartbeat(self, agent_id: str, hb: Heartbeat) -> Agent | None:
        a = self.agents.get(agent_id)
        if a is None:
            return None
        self.heartbeats += 1
        self._contact(agent_id)
        came_back = a.status == "offline"
        persist = (
            came_back
            or a.initializing != hb.initializing
            or a.ready_models != hb.ready_models
            or a.total_models != hb.total_models
            or a.status_message != hb.status_message
        )
        a.status = "online"
        a.last_seen = utcnow()
        a.initializing = hb.initializing
        a.ready_models = hb.ready_models
        a.total_models = hb.total_models
        a.requests_in_flight = hb.requests_in_flight
        a.cpu_percent = hb.cpu_percent
        a.memory_percent = hb.memory_percent
        a.status_message = hb.status_message
        if hb.gpus:
            a.gpus = hb.gpus
        if hb.loaded_models is not None:
            a.loaded_models = hb.loaded_models
        self._changed(a, persist)
        if came_back:
            log.info("agent %s (%s) is back online", a.name, a.id)
            self._notify(self.on_online, a)
        return a

    async def set_draining(self, a: Agent, draining: bool) -> None:
        """Written at once: a drain must outlive a coordinator restart a second later."""
        if a.draining == draining:
            return
        a.draining = draining
        log.info("agent %s (%s) %s", a.name, a.id, "draining" if draining else "undrained")
        self._changed(a, persist=False)  # first: the copy others read must be the newer one
        await self.store.save_agents([a])

    async def forget(self, a: Agent, *, elsewhere: bool = False) -> None:
        """Remove ``a``: offline first (listeners end its requests and tasks), then from memory and
        the store, or memory only if removed ``elsewhere`` (cluster.py); it may register anew."""
        if a.status == "online":
            a.status = "offline"
            self._changed(a, persist=False)
            self._notify(self.on_offline_elsewhere if elsewhere else self.on_offline, a)
        self.agents.pop(a.id, None)
        if self._by_url.get(a.url) == a.id:
            del self._by_url[a.url]
        if a.instance_id and self._by_instance.get(a.instance_id) == a.id:
            del self._by_instance[a.instance_id]
        self.liveness.drop(a.id)
        self.rows.dirty.discard(a.id)
        if not elsewhere:
            await self.store.delete_agent(a.id)
            self._notify(self.on_forget, a)
        log.info("agent %s (%s) removed%s", a.name, a.id, " elsewhere" if elsewhere else "")
        self.events.publish("agent_removed", {"id": a.id})

    def _contact(self, agent_id: str) -> None:
        if self.contacted is not None:
            self.contacted.add(agent_id)
        self._heard(agent_id)

    def _heard(self, agent_id: str) -> None:
        self.liveness.heard(agent_id, self.agents[agent_id].heartbeat_interval_s)

    def touch(self, agent_id: str) -> None:
        """Contact from an online agent proves it alive (an offline one returns by heartbeat)."""
        if agent_id in self.liveness:
            self._contact(agent_id)

    # -- other coordinators' news (cluster.py) ---------------------------------------------

    def apply_remote(self, copy: Agent) -> None:
        """Another coordinator's copy of an agent, read from the database: taken when newer
        than ours. Listeners that keep views (``on_change``, ``on_offline``) hear of it;
        ``on_online`` does not, since the coordinator that saw the agent arrive acts on it."""
        observe_revision(copy.revision)
        a = self.agents.get(copy.id)
        if a is not None and a.revision >= copy.revision:
            if a.draining != copy.draining:  # drained elsewhere, ours newer by heartbeats only
                a.draining = copy.draining
                self._changed(a, persist=False)
            return
        known = a is not None
        was_online = a is not None and a.status == "online"
        if a is None:
            a = copy
        else:
            if a.url != copy.url:
                self._by_url.pop(a.url, None)
            for field in copy.__struct_fields__:
                setattr(a, field, getattr(copy, field))
        self._index(a)
        if a.status != "online":
            self.liveness.drop(a.id)
        elif not was_online:
            self._heard(a.id)
        self.events.publish("agent", a)
        self._notify(self.on_change, a)
        if was_online and a.status == "offline":
            self._notify(self.on_offline_elsewhere, a)
        elif known and not was_online and a.status == "online":
            self._notify(self.on_online_elsewhere, a)

    def heard_elsewhere(self, agent_ids: list[str]) -> None:
        """Another coordinator heard from these agents just now: they are alive."""
        now = utcnow()
        for agent_id in agent_ids:
            if agent_id in self.liveness:
                self._heard(agent_id)
                self.agents[agent_id].last_seen = now

    async def _confirm_expired(self) -> None:
        """Before the sweep: expiring agents that some coordinator heard from lately (a news
        that may not have reached us) are alive."""
        if self.heard_within is None:
            return
        expiring = self.liveness.expiring()
        if expiring:
            self.heard_elsewhere(list(await self.heard_within(expiring, self.timeout)))

    def sweep(self) -> None:
        """Agents silent for longer than the timeout go offline; O(agents expired)."""
        for agent_id in self.liveness.expired():
            a = self.agents.get(agent_id)
            if a is not None and a.status == "online":
                a.status = "offline"
                log.warning(
                    "agent %s (%s) offline: silent for more than %gs", a.name, a.id, self.timeout
                )
                self._changed(a, persist=True)
                self._notify(self.on_offline, a)
        self._sweep_silent()

    def _sweep_silent(self) -> None:
        """Agents that missed two heartbeats become suspect at once; O(agents expired)."""
        for agent_id, silent_s in self.liveness.silent(self._online_interval):
            a = self.agents.get(agent_id)
            if a is None:  # removed by an earlier listener of this sweep
                continue
            log.warning(
                "agent %s (%s) missed two heartbeats (silent %.1fs, every %gs expected)",
                a.name,
                a.id,
                silent_s,
                a.heartbeat_interval_s,
            )
            self._notify(self.on_silent, a)

    def _online_interval(self, agent_id: str) -> float | None:
        a = self.agents.get(agent_id)
        return a.heartbeat_interval_s if a is not None and a.status == "online" else None

    async def flush(self) -> None:
        await self.rows.flush(self.agents)

    async def run(self) -> None:
        interval = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(interval)
            if self.leading:
                try:
                    await self._confirm_expired()
                except Exception as e:
                    log.warning("cannot read other coordinators' contacts; not sweeping: %s", e)
                else:
                    self.sweep()
            else:
                self._sweep_silent()  # the leader judges who is offline; suspicion is local
            try:
                await self.flush()
            except StoreUnavailable:
                pass  # the store logged it once; the agents stay dirty until it can write
            except Exception:
                log.exception("writing agents to the store failed; will retry")


REGISTRY = web.AppKey("registry", Registry)


async def run_registry(app: web.Application) -> AsyncIterator[None]:
    """After the store's and the event bus's entries."""
    registry = app[REGISTRY] = Registry(app[STORE], app[EVENTS], app[SETTINGS].heartbeat_timeout_s)
    await registry.load()
    async with background(registry.run(), "registry-sweep"):
        yield
    await registry.jobs.close()
    await registry.flush()
