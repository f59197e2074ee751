"""Which ready agents can serve each model: one balancer pool per model, kept from registry
and distribution events, and the in-flight count of every agent.

An agent that has been ready once (not ``initializing``) serves every model it has loaded or
installed (as the ``Inventory`` says), except one it is downloading (a re-download deletes it
first), so fetching one model never takes it out of service for the others. Listeners keep the
pools current, so a request costs a dictionary lookup and one ``pick``, never a scan of the
fleet. With ``coordinator.max_requests_per_agent`` an agent with that many requests in flight
is full: ``pick`` passes it over, and the gate's waiters are woken when a slot frees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from fleetd.coordinator.inventory import Inventory
from fleetd.coordinator.metrics import Metrics
from fleetd.coordinator.vram import gpu_memory
from fleetd.core.balancing import Balancer, Load
from fleetd.core.wire import TERMINAL, Agent, Task

log = logging.getLogger("fleetd.gateway")

_EMPTY: frozenset[str] = frozenset()


def _load(a: Agent, in_flight: int) -> Load:
    util = 0.0
    free = 0
    if a.gpus:
        for g in a.gpus:
            util += g.utilization or 0.0
            free += g.memory_bytes - (g.memory_used_bytes or 0)
        util /= len(a.gpus)
    return Load(in_flight, a.requests_in_flight, round(util, 2), free)


class Pools:
    """Candidate pools, in-flight counts, suspects and the downloads under way."""

    def __init__(
        self,
        supported: Iterable[str],
        agents: Mapping[str, Agent],
        balancer: Callable[[], Balancer],
        metrics: Metrics,
        inventory: Inventory,
        tasks: Iterable[Task] = (),
        max_per_agent: int = 0,
    ) -> None:
        self.agents = agents
        """Agent id -> agent, as the registry keeps them."""
        self.inventory = inventory
        """Which agent has which model installed; followed through its change events."""
        self.max_per_agent = max_per_agent
        """0: no cap (Ollama queues); else an agent with this many in flight is full."""
        self.supported = frozenset(supported)
        self.holds: Callable[[Agent], Iterable[str]] = lambda a: self.supported
        """The models ``a`` must hold (placement, GPU fit): what it serves once all ready."""
        self._new_pool = balancer
        self.pools: dict[str, Balancer] = {}
        """Model -> the online, non-initializing, healthy agents that can serve it."""
        self.in_flight: dict[str, int] = {}
        self.suspect: set[str] = set()
        self.on_room: list[Callable[[], None]] = []
        """Called when an agent joins pools it was not in, or (under ``max_per_agent``) ends a
        request: the gate serves its waiters."""
        self._member: dict[str, list[Balancer]] = {}
        self._inputs: dict[str, tuple[object, ...]] = {}
        """Agent id -> what its pools were last worked out from (see ``agent_changed``)."""
        self.epoch = 0
        """Bumped by every change of what agents serve that a heartbeat does not carry: the
        supported list, placement, model sizes, installs, downloads."""
        self._serving: dict[str, frozenset[str]] = {}
        """Agent id -> the models whose pools it is in."""
        self._extra: dict[str, frozenset[str]] = {}
        self._holders: dict[str, int] = {}
        self._active: dict[str, tuple[str, str]] = {}
        """Unfinished download task id -> (agent id, model)."""
        self._fetching: dict[str, set[str]] = {}
        """Agent id -> the models it is downloading (not servable there meanwhile)."""
        self.downloads: dict[str, int] = {}
        """Model -> how many unfinished download tasks it has (a model on its way)."""
        for t in tasks:
            self.task_changed(t)
        inventory.on_change.append(self.installed_changed)
        metrics.in_flight.source = self._in_flight_by_agent
        for a in list(agents.values()):
            # As the store knew them before a restart: an agent that was ready is a candidate
            # until its first heartbeat says otherwise (a failure moves the request on).
            self.agent_changed(a)

    # -- what the fleet has ----------------------------------------------------------------

    def has_model(self, model: str) -> bool:
        """Supported, or held by some agent whatever its state (else 404)."""
        return (
            model in self.supported
            or model in self._holders
            # Agents not heard from since this coordinator started are not in _holders.
            or bool(self.inventory.agents_with(model))
        )

    def offline_holders(self, model: str) -> list[str] | None:
        """None when ``model`` is on its way (supported, being downloaded, or held by an agent
        that is online or not known to be offline): worth waiting for. Else the names of the
        offline agents that hold it. O(agents), only when no agent can take the request."""
        if model in self.supported or self.downloads.get(model):
            return None
        offline: list[str] = []
        holders = [aid for aid, models in self._extra.items() if model in models]
        holders += self.inventory.agents_with(model)
        for agent_id in dict.fromkeys(holders):
            a = self.agents.get(agent_id)
            if a is None or a.status == "online":
                return None
            offline.append(a.name)
        return offline

    def can_serve(self, model: str) -> bool:
        """Some ready agent can take a request for ``model`` now."""
        pool = self.pools.get(model)
        return pool is not None and len(pool) > 0

    def _models(self, a: Agent) -> frozenset[str]:
        """The models other than the supported ones that ``a`` has (installed or loaded)."""
        extra = [m for m in a.loaded_models if m not in self.supported]
        extra += [m for m in self.inventory.models(a.id) if m not in self.supported]
        return frozenset(extra) if extra else _EMPTY

    def _set_extra(self, agent_id: str, models: frozenset[str]) -> None:
        old = self._extra.get(agent_id, _EMPTY)
        if old == models:
            return
        for m in old - models:
            left = self._holders[m] - 1
            if left:
                self._holders[m] = left
            else:
                del self._holders[m]
        for m in models - old:
            self._holders[m] = self._holders.get(m, 0) + 1
        if models:
            self._extra[agent_id] = models
        else:
            self._extra.pop(agent_id, None)

    def _serves(self, a: Agent) -> frozenset[str]:
        """What ready agent ``a`` can serve: the models it has loaded or installed (every
        supported one while it reports them all ready), less those it is downloading."""
        models = set(a.loaded_models)
        models.update(self.inventory.models(a.id))
        if a.ready_models >= a.total_models:
            models.update(self.holds(a))
        fetching = self._fetching.get(a.id)
        if fetching:
            models -= fetching
        return frozenset(models)

    # -- listeners -------------------------------------------------------------------------

    def agent_changed(self, a: Agent) -> None:
        """Registry listener: a heartbeat, registration or status change of ``a``.

        Most heartbeats change only figures: an agent still in its pools, whose models,
        readiness, GPUs and labels are as they were, only has its load updated (working out
        what it serves is most of a heartbeat's cost at thousands of agents)."""
        inputs = (
            a.status,
            a.initializing,
            a.draining,
            a.ready_models >= a.total_models,
            tuple(a.loaded_models),
            gpu_memory(a),
            a.margin_bytes,
            id(a.labels),
            self.epoch,
        )
        member = self._member.get(a.id)
        if member is not None and self._inputs.get(a.id) == inputs:
            load = _load(a, self.in_flight.get(a.id, 0))
            for pool in member:
                pool.update(a.id, load)
            return
        self._set_extra(a.id, self._models(a))
        if a.status == "online":
            # Any news from the agent itself proves it is up again.
            self.suspect.discard(a.id)
        self._place(a)
        if a.id in self._member:  # placed: the next heartbeat alike may take the shortcut
            self._inputs[a.id] = inputs

    def installed_changed(self, agent_id: str) -> None:
        """Inventory listener: ``agent_id`` serves what it installed at once, not from its
        next heartbeat on (and a suspect stays suspect: this is no heartbeat)."""
        self.epoch += 1
        a = self.agents.get(agent_id)
        if a is not None:
            self._set_extra(a.id, self._models(a))
            self._place(a)

    def task_changed(self, t: Task) -> None:
        """Distribution listener: keep count of the downloads under way per model."""
        if t.status in TERMINAL:
            if self._active.pop(t.id, None) is None:
                return
            left = self.downloads[t.model] - 1
            if left:
                self.downloads[t.model] = left
            else:
                del self.downloads[t.model]
            fetching = self._fetching.get(t.agent_id)
            if fetching is not None:
                fetching.discard(t.model)
                if not fetching:
                    del self._fetching[t.agent_id]
        elif t.id not in self._active:
            self._active[t.id] = (t.agent_id, t.model)
            self.downloads[t.model] = self.downloads.get(t.model, 0) + 1
            self._fetching.setdefault(t.agent_id, set()).add(t.model)
        else:
            return
        self.epoch += 1
        a = self.agents.get(t.agent_id)
        if a is not None:
            self._place(a)  # the model leaves (or rejoins) that agent's pools at once

    def mark_suspect(self, agent_id: str, why: str) -> None:
        """Keep the balancer away from ``agent_id`` until it is heard from again."""
        if agent_id not in self.suspect:
            log.warning("agent %s suspect until its next heartbeat: %s", agent_id, why)
        self.suspect.add(agent_id)
        self._leave(agent_id)

    # -- membership ------------------------------------------------------------------------

    def _pool(self, model: str) -> Balancer:
        pool = self.pools.get(model)
        if pool is None:
            pool = self.pools[model] = self._new_pool()
        return pool

    def set_supported(self, models: Iterable[str], agents: Iterable[Agent]) -> None:
        """The supported list or placement changed: every agent's pools follow."""
        self.supported = frozenset(models)
        self.epoch += 1
        for a in list(agents):
            self._set_extra(a.id, self._models(a))
            self._place(a)

    def _place(self, a: Agent) -> None:
        """Put ``a`` in the pools of the models it serves now, with its current load."""
        if a.status != "online" or a.initializing or a.draining or a.id in self.suspect:
            self._leave(a.id)  # requests under way on it run to their end
            return
        serves = self._serves(a)
        load = _load(a, self.in_flight.get(a.id, 0))
        member = self._member.get(a.id)
        joined = member is None or serves != self._serving.get(a.id)
        if member is None or joined:
            self._leave(a.id)
            self._serving[a.id] = serves
            member = self._member[a.id] = [self._pool(m) for m in serves]
        for pool in member:
            pool.update(a.id, load)
        if joined:
            self._room()

    def _room(self) -> None:
        for fn in self.on_room:
            fn()

    def _leave(self, agent_id: str) -> None:
        self._member.pop(agent_id, None)
        self._inputs.pop(agent_id, None)
        for m in self._serving.pop(agent_id, ()):
            pool = self.pools.get(m)
            if pool is not None:
                pool.discard(agent_id)
                if not len(pool):
                    del self.pools[m]

    # -- in-flight accounting --------------------------------------------------------------

    def _in_flight_by_agent(self) -> Iterator[tuple[str, int]]:
        """Read at scrape time, so that neither requests nor registrations pay for it."""
        for agent_id in self.agents:
            yield agent_id, self.in_flight.get(agent_id, 0)

    def pick(self, model: str) -> str | None:
        """An agent for ``model`` with its in-flight count raised (``end`` it), or None."""
        pool = self.pools.get(model)
        agent_id = pool.pick() if pool is not None else None
        if agent_id is not None:
            if self.max_per_agent and self.in_flight.get(agent_id, 0) >= self.max_per_agent:
                return None  # the least busy candidate is full: all are (least-busy)
            self.start(agent_id)
        return agent_id

    def start(self, agent_id: str) -> None:
        self.in_flight[agent_id] = self.in_flight.get(agent_id, 0) + 1
        for pool in self._member.get(agent_id, ()):
            pool.started(agent_id)

    def end(self, agent_id: str) -> None:
        n = self.in_flight.get(agent_id, 1) - 1
        if n:
            self.in_flight[agent_id] = n
        else:
            self.in_flight.pop(agent_id, None)
        for pool in self._member.get(agent_id, ()):
            pool.finished(agent_id)
        if self.max_per_agent:
            self._room()  # a slot freed: the next waiter in the fair turn takes it
