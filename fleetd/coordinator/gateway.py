"""Which agent serves an inference request: candidate pools kept from registry events, the
gate where requests wait while no agent is ready (spec M6), and one failover before the
first response byte.

Pools are balancer plugin instances, one per model, holding the ready agents that can serve
it: an agent that has been ready once (not ``initializing``) serves every model it has loaded
or installed, except one it is downloading (a re-download deletes it first), so fetching one
model never takes it out of service for the others. Registry and distribution listeners keep
them current, so a request costs a dictionary lookup and one ``pick``, never a scan.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter, Histogram

from fleetd.config import CoordinatorConfig
from fleetd.coordinator import loops
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.fairgate import FairQueue, Waiter
from fleetd.coordinator.inventory import INVENTORY, Inventory
from fleetd.coordinator.keys import CALLER
from fleetd.coordinator.metrics import METRICS, Metrics
from fleetd.coordinator.registry import REGISTRY, Registry
from fleetd.coordinator.settings import SETTINGS
from fleetd.coordinator.usage import SERVED_BY
from fleetd.core import proxy
from fleetd.core.balancing import Balancer, Load
from fleetd.core.errors import ApiError, not_found
from fleetd.core.http import CLIENT, Head, decode_head, request_model
from fleetd.core.wire import TERMINAL, Agent, Task

log = logging.getLogger("fleetd.gateway")

RETRY_AFTER_S = 5
"""What a 503 ``models_starting`` tells clients to wait before trying again."""

_EMPTY: frozenset[str] = frozenset()


_head = msgspec.json.Decoder(Head)


def unknown_model(model: str) -> ApiError:
    """Worded as Ollama words it, so clients that match the text keep working."""
    return not_found(f'model "{model}" not found, try pulling it first', code="model_not_found")


def fleet_busy(message: str) -> ApiError:
    return ApiError(503, "fleet_busy", message, headers={"Retry-After": str(RETRY_AFTER_S)})


STOPPING = "the coordinator is shutting down; retry the request in a moment"


def _stopping() -> ApiError:
    return proxy.shutting_down(STOPPING)


def models_starting(message: str) -> ApiError:
    return ApiError(503, "models_starting", message, headers={"Retry-After": str(RETRY_AFTER_S)})


def out_of_descriptors(e: BaseException) -> bool:
    """Whether ``e`` (or the OSError it wraps) is this process or system running out of file
    descriptors (EMFILE/ENFILE): the coordinator's own resource error, never the agent's."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.EMFILE, errno.ENFILE):
            return True
        os_error = getattr(seen, "os_error", None)
        if isinstance(os_error, OSError) and os_error.errno in (errno.EMFILE, errno.ENFILE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def no_agent_has_model(model: str, offline: list[str]) -> ApiError:
    """Waiting would not help: only agents that are offline (or gone) ever had the model."""
    held = f" (only offline agents have it: {', '.join(offline[:5])})" if offline else ""
    return ApiError(
        503,
        "no_agent_has_model",
        f"no online agent has {model}{held}; it is not a supported model and no download of "
        "it is under way, so no agent can serve it until one has it (pull it with /api/pull)",
    )


def _load(a: Agent, in_flight: int) -> Load:
    util = 0.0
    free = 0
    if a.gpus:
        for g in a.gpus:
            util += g.utilization or 0.0
            free += g.memory_bytes - (g.memory_used_bytes or 0)
        util /= len(a.gpus)
    return Load(in_flight, a.requests_in_flight, round(util, 2), free)


class _Retry(Exception):
    """The agent failed before sending a byte; ``reply`` is its 5xx answer, if any."""

    def __init__(self, message: str, reply: web.Response | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class Gateway:
    """Candidate pools, in-flight counts, suspects and the wait queue of one coordinator."""

    def __init__(
        self,
        settings: CoordinatorConfig,
        registry: Registry,
        balancer: Callable[[], Balancer],
        metrics: Metrics,
        inventory: Inventory,
        tasks: Iterable[Task] = (),
    ) -> None:
        self.registry = registry
        self.inventory = inventory
        self.supported = frozenset(settings.supported_models)
        """Every model some agent must hold (supported or placed): known even with no holder."""
        self.holds: Callable[[Agent], Iterable[str]] = lambda a: self.supported
        """The models ``a`` must hold: what it serves once it reports them all ready."""
        self.queue_limit = settings.queue_limit
        self.queue_timeout_s = settings.queue_timeout_s
        self._new_pool = balancer
        self.pools: dict[str, Balancer] = {}
        """Model -> the online, non-initializing, healthy agents that can serve it."""
        self.in_flight: dict[str, int] = {}
        self.suspect: set[str] = set()
        self._member: dict[str, list[Balancer]] = {}
        self._serving: dict[str, frozenset[str]] = {}
        """Agent id -> the models whose pools it is in."""
        self._extra: dict[str, frozenset[str]] = {}
        self._holders: dict[str, int] = {}
        self._waiters = FairQueue()
        self.max_per_agent = settings.max_requests_per_agent
        """0: no cap (Ollama queues); else an agent with this many in flight is full."""
        self.metrics = metrics
        self._requests: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._gauged: set[str] = set()
        self._flights: dict[str, set[proxy.Flight]] = {}
        self.stopping = False
        self._overload_logged = -60.0
        self._idle = asyncio.Event()
        """Set once stopping and no request is in flight on any agent."""
        self._active: dict[str, tuple[str, str]] = {}
        """Unfinished download task id -> (agent id, model)."""
        self._fetching: dict[str, set[str]] = {}
        """Agent id -> the models it is downloading (not servable there meanwhile)."""
        self.downloads: dict[str, int] = {}
        """Model -> how many unfinished download tasks it has (a model on its way)."""
        for t in tasks:
            self.task_changed(t)
        registry.on_change.append(self.agent_changed)
        inventory.on_change.append(self.installed_changed)
        registry.on_offline.append(self.agent_offline)
        for a in list(registry.agents.values()):
            # As the store knew them before a restart: an agent that was ready is a candidate
            # until its first heartbeat says otherwise (a failure moves the request on).
            self.agent_changed(a)

    # -- pools, kept from registry events -------------------------------------------------

    def has_model(self, model: str) -> bool:
        """Supported, or held by some agent whatever its state (else 404)."""
        return (
            model in self.supported
            or model in self._holders
            # Agents not heard from since this coordinator started are not in _holders.
            or bool(self.inventory.agents_with(model))
        )

    def _offline_holders(self, model: str) -> list[str] | None:
        """None when ``model`` is on its way (supported, being downloaded, or held by an agent
        that is online or not known to be offline): worth waiting for. Else the names of the
        offline agents that hold it. O(agents), only when no agent can take the request."""
        if model in self.supported or self.downloads.get(model):
            return None
        offline: list[str] = []
        holders = [aid for aid, models in self._extra.items() if model in models]
        holders += self.inventory.agents_with(model)
        for agent_id in dict.fromkeys(holders):
            a = self.registry.agents.get(agent_id)
            if a is None or a.status == "online":
                return None
            offline.append(a.name)
        return offline

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

    def _pool(self, model: str) -> Balancer:
        pool = self.pools.get(model)
        if pool is None:
            pool = self.pools[model] = self._new_pool()
        return pool

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

    def agent_changed(self, a: Agent) -> None:
        """Registry listener: a heartbeat, registration or status change of ``a``."""
        if a.id not in self._gauged:
            # Read at scrape time, so that requests do not pay for the gauge.
            self._gauged.add(a.id)
            self.metrics.in_flight.labels(a.id).set_function(partial(self._in_flight, a.id))
        self._set_extra(a.id, self._models(a))
        if a.status == "online":
            # Any news from the agent itself proves it is up again.
            self.suspect.discard(a.id)
        self._place(a)

    def installed_changed(self, agent_id: str) -> None:
        """Inventory listener: ``agent_id`` serves what it installed at once, not from its
        next heartbeat on (and a suspect stays suspect: this is no heartbeat)."""
        a = self.registry.agents.get(agent_id)
        if a is not None:
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
        if joined and self._waiters:
            self._wake()

    def set_supported(self, models: Iterable[str]) -> None:
        """The supported list or placement changed: every agent's pools follow."""
        self.supported = frozenset(models)
        for a in list(self.registry.agents.values()):
            self._set_extra(a.id, self._models(a))
            self._place(a)

    def can_serve(self, model: str) -> bool:
        """Some ready agent can take a request for ``model`` now."""
        pool = self.pools.get(model)
        return pool is not None and len(pool) > 0

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
        a = self.registry.agents.get(t.agent_id)
        if a is not None:
            self._place(a)  # the model leaves (or rejoins) that agent's pools at once

    def agent_offline(self, a: Agent) -> None:
        """Registry listener: end the requests still waiting on an agent that fell silent.

        Not while stopping: a stopping coordinator no longer hears heartbeats, so agents
        "expire" through its own fault; ``stop`` ends those requests saying why."""
        flights = self._flights.get(a.id)
        if flights and not self.stopping:
            log.warning(
                "agent %s (%s) offline: ending %d request(s) in flight on it",
                a.name,
                a.id,
                len(flights),
            )
            error = aiohttp.ClientConnectionError(f"agent {a.name} ({a.id}) went offline")
            for flight in list(flights):
                flight.abort(error)

    def agent_silent(self, a: Agent) -> None:
        """Registry listener: ``a`` missed two heartbeats. No new requests go to it, and
        those still waiting for its first byte move on; replies under way are left to run
        until it goes offline (they cannot be moved)."""
        why = f"agent {a.name} ({a.id}) missed two heartbeats"
        self.mark_suspect(a.id, why)
        waiting = [f for f in self._flights.get(a.id, ()) if f.upstream is None]
        if waiting:
            log.warning("moving %d request(s) waiting on agent %s elsewhere", len(waiting), a.id)
        error = aiohttp.ClientConnectionError(why)
        for flight in waiting:
            flight.abort(error)

    def _leave(self, agent_id: str) -> None:
        self._member.pop(agent_id, None)
        for m in self._serving.pop(agent_id, ()):
            pool = self.pools.get(m)
            if pool is not None:
                pool.discard(agent_id)
                if not len(pool):
                    del self.pools[m]

    def mark_suspect(self, agent_id: str, why: str) -> None:
        """Keep the balancer away from ``agent_id`` until it is heard from again."""
        if agent_id not in self.suspect:
            log.warning("agent %s suspect until its next heartbeat: %s", agent_id, why)
        self.suspect.add(agent_id)
        self._leave(agent_id)

    async def stop(self, grace_s: float) -> None:
        """On shutdown: requests waiting in the gate get 503 ``shutting_down`` now, requests
        in flight get ``grace_s`` to finish, then are ended with an error saying why."""
        self.stopping = True
        for fut in self._waiters.clear():
            if not fut.done():
                fut.set_exception(_stopping())
        self.metrics.queue_depth.set(0)
        if not self._flights:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return
        except asyncio.TimeoutError:
            pass
        flights = [f for fs in self._flights.values() for f in fs]
        log.warning(
            "ending %d request(s) still in flight: the coordinator is stopping", len(flights)
        )
        error = proxy.ShuttingDown(STOPPING)
        for flight in flights:
            flight.abort(error)

    def _overloaded(self, e: BaseException) -> ApiError:
        """The coordinator itself ran out of descriptors: not the agent's fault, so no
        suspect, no failover (the next agent would fail the same way); logged once a minute."""
        now = time.monotonic()
        if now - self._overload_logged >= 60:
            self._overload_logged = now
            log.error(
                "cannot open a connection to an agent: %s; answering 503 coordinator_overloaded "
                "(raise LimitNOFILE, see docs/troubleshooting.md)",
                e,
            )
        return ApiError(
            503,
            "coordinator_overloaded",
            "the coordinator has too many open connections (Too many open files); "
            "retry in a moment",
            headers={"Retry-After": "1"},
        )

    # -- in-flight accounting -------------------------------------------------------------

    def _in_flight(self, agent_id: str) -> float:
        return self.in_flight.get(agent_id, 0)

    def _start(self, agent_id: str) -> None:
        self.in_flight[agent_id] = self.in_flight.get(agent_id, 0) + 1
        for pool in self._member.get(agent_id, ()):
            pool.started(agent_id)

    def _end(self, agent_id: str) -> None:
        n = self.in_flight.get(agent_id, 1) - 1
        if n:
            self.in_flight[agent_id] = n
        else:
            self.in_flight.pop(agent_id, None)
        for pool in self._member.get(agent_id, ()):
            pool.finished(agent_id)
        if self.max_per_agent and self._waiters:
            self._wake()  # a slot freed: the next waiter in the fair turn takes it

    # -- the gate -------------------------------------------------------------------------

    def _pick(self, model: str) -> str | None:
        pool = self.pools.get(model)
        agent_id = pool.pick() if pool is not None else None
        if agent_id is not None:
            if self.max_per_agent and self.in_flight.get(agent_id, 0) >= self.max_per_agent:
                return None  # the least busy candidate is full: all are (least-busy)
            self._start(agent_id)
        return agent_id

    def _wake(self) -> None:
        """Serve waiting requests round-robin across keys (fairgate.py), each as soon as its
        model has a candidate."""
        self._waiters.serve(self._pick)
        self.metrics.queue_depth.set(len(self._waiters))

    async def acquire(self, model: str, key: str = "") -> str:
        """A ready agent for ``model``, its in-flight count already raised; waits in the gate
        while there is none. 404 for a model nobody has, 503 when the queue or the wait ends."""
        if self.stopping:
            raise _stopping()
        agent_id = self._pick(model)
        if agent_id is not None:
            return agent_id
        if not self.has_model(model):
            raise unknown_model(model)
        offline = self._offline_holders(model)
        if offline is not None:
            raise no_agent_has_model(model, offline)
        if len(self._waiters) >= self.queue_limit:
            raise models_starting(
                f"no agent is ready for {model} yet and {len(self._waiters)} requests are "
                "already waiting (coordinator.queue_limit); models are starting, retry later"
            )
        agent_id = await self._wait(model, key)
        if agent_id is None:
            if self.can_serve(model):
                raise fleet_busy(
                    f"every agent serving {model} had coordinator.max_requests_per_agent "
                    f"requests in flight for {self.queue_timeout_s:g}s; retry later"
                )
            raise models_starting(
                f"no agent became ready for {model} within {self.queue_timeout_s:g}s "
                "(coordinator.queue_timeout_s); models are starting, retry later"
            )
        return agent_id

    async def _wait(self, model: str, key: str) -> str | None:
        """Wait in the gate, at most ``queue_timeout_s``, for a candidate for ``model``."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = self._waiters.add(key, model, fut)
        self.metrics.queue_depth.set(len(self._waiters))
        try:
            await asyncio.wait((fut,), timeout=self.queue_timeout_s)
        except asyncio.CancelledError:
            if fut.done() and fut.exception() is None:
                self._end(fut.result())  # woken just as its client left
            else:
                fut.cancel()
                self._discard_waiter(entry)
            raise
        if fut.done():
            return fut.result()
        fut.cancel()
        self._discard_waiter(entry)
        return None

    def _discard_waiter(self, entry: Waiter) -> None:
        if self._waiters.discard(entry):
            self.metrics.queue_depth.set(len(self._waiters))

    # -- forwarding -----------------------------------------------------------------------

    def model_of(self, body: bytes) -> str:
        """The normalized model a request body names; 400 for a bad body or name."""
        head = decode_head(_head, body)
        return request_model(head.model or head.name)

    def _count(self, path: str, outcome: str) -> None:
        c = self._requests.get((path, outcome))
        if c is None:
            c = self._requests[(path, outcome)] = self.metrics.inference_requests.labels(
                path, outcome
            )
        c.inc()

    def _observe(self, path: str, seconds: float) -> None:
        h = self._latency.get(path)
        if h is None:
            h = self._latency[path] = self.metrics.inference_latency.labels(path)
        h.observe(seconds)

    async def forward(self, request: web.Request, body: bytes, model: str) -> web.StreamResponse:
        """Send the request to a ready agent and relay its reply; one failover before the
        first byte, onto another candidate, when the agent fails or answers 5xx. With no
        other candidate the request waits in the gate for one (at most ``queue_timeout_s``)
        before the failure is relayed."""
        path = request.path
        started = time.monotonic()
        caller = request.get(CALLER)
        key = caller.id if caller is not None else ""
        try:
            agent_id = await self.acquire(model, key)
        except ApiError as e:
            self._count(path, e.code)
            raise
        headers = proxy.request_headers(request.headers)
        headers[loops.HEADER] = loops.forward_mark(request)
        session = request.app[CLIENT]
        retried = False
        while True:
            try:
                return await self._attempt(request, session, agent_id, body, headers, started)
            except _Retry as failure:
                if self.stopping:
                    self._count(path, "shutting_down")
                    raise _stopping() from None
                self.mark_suspect(agent_id, str(failure))
                next_id = None
                if not retried:
                    next_id = self._pick(model)
                    if next_id is None and len(self._waiters) < self.queue_limit:
                        next_id = await self._wait(model, key)
                if next_id is None:
                    self._count(path, "agent_failed")
                    if failure.reply is not None:
                        return failure.reply
                    raise ApiError(502, "agent_unavailable", str(failure)) from None
                agent_id, retried = next_id, True

    async def _attempt(
        self,
        request: web.Request,
        session: aiohttp.ClientSession,
        agent_id: str,
        body: bytes,
        headers: CIMultiDict[str],
        started: float,
    ) -> web.StreamResponse:
        """One try on ``agent_id`` (whose in-flight count is already raised); ends it."""
        path = request.path
        outcome = proxy.CLIENT_GONE
        flight = proxy.Flight(asyncio.current_task())
        flights = self._flights.setdefault(agent_id, set())
        flights.add(flight)
        try:
            a = self.registry.agents[agent_id]
            what = f"agent {a.name} ({a.id})"
            try:
                upstream = await session.request(
                    request.method,
                    a.url.rstrip("/") + request.path_qs,
                    data=body,
                    headers=headers,
                    timeout=proxy.TIMEOUT,
                )
            except proxy.UPSTREAM_ERRORS as e:
                if out_of_descriptors(e):
                    raise self._overloaded(e) from None
                raise _Retry(f"{what} unreachable: {e or type(e).__name__}") from None
            except asyncio.CancelledError:
                if not flight.aborted:
                    raise
                proxy.uncancel(flight.task)
                raise _Retry(f"{flight.why} before answering") from None
            flight.upstream = upstream
            request[SERVED_BY] = agent_id
            try:
                if upstream.status >= 500:
                    reply = await _reply(upstream)
                    outcome = proxy.OK  # read whole: the connection can be reused
                    raise _Retry(f"{what} answered HTTP {upstream.status}", reply)
                self._observe(path, time.monotonic() - started)
                resp, outcome = await proxy.relay(request, upstream, what)
            finally:
                if outcome == proxy.OK:
                    upstream.release()
                else:
                    upstream.close()
        except asyncio.CancelledError:
            self._count(path, proxy.CLIENT_GONE)
            raise
        except ApiError:
            self._count(path, proxy.BROKEN)
            raise
        finally:
            flights.discard(flight)
            if not flights and self._flights.get(agent_id) is flights:
                del self._flights[agent_id]
                if self.stopping and not self._flights:
                    self._idle.set()
            self._end(agent_id)
        if outcome == proxy.OK and resp.status >= 400:
            outcome = str(resp.status)
        self._count(path, outcome)
        return resp


async def _reply(upstream: aiohttp.ClientResponse) -> web.Response:
    """A copy of an error reply, to relay if no other agent can take the request."""
    try:
        body = await upstream.read()
    except proxy.UPSTREAM_ERRORS:
        body = b""
    return web.Response(
        status=upstream.status, body=body, headers=proxy.response_headers(upstream.headers)
    )


GATEWAY = web.AppKey("gateway", Gateway)


def gateway_ctx(
    balancer: Callable[[], Balancer],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx entry, after the inventory's and the distribution's."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        dist = app[DISTRIBUTION]
        gateway = Gateway(
            app[SETTINGS],
            app[REGISTRY],
            balancer,
            app[METRICS],
            app[INVENTORY],
            dist.tasks.values(),
        )
        dist.on_task.append(gateway.task_changed)
        app[REGISTRY].on_silent.append(gateway.agent_silent)
        app[GATEWAY] = gateway
        yield

    return ctx
