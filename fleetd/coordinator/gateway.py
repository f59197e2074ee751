"""Forwarding an inference request: one attempt on an agent the gate handed out, one
failover onto another before the first response byte, and attempts ended when their agent
goes offline or misses heartbeats.

``Gateway`` puts the three parts together: ``Pools`` (pools.py) says which ready agents can
serve a model, ``Gate`` (gate.py) holds requests while none can, and this module sends the
request and relays the reply (core/proxy.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter, Histogram

from fleetd.coordinator import loops
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.gate import STOPPING, Gate, stopping
from fleetd.coordinator.inventory import INVENTORY
from fleetd.coordinator.metrics import METRICS, Metrics
from fleetd.coordinator.pools import Pools
from fleetd.coordinator.registry import REGISTRY, Registry
from fleetd.coordinator.settings import SETTINGS
from fleetd.coordinator.usage import Meter
from fleetd.core import proxy
from fleetd.core.balancing import Balancer
from fleetd.core.errors import ApiError
from fleetd.core.http import CLIENT, Head, decode_head, request_model
from fleetd.core.wire import Agent

log = logging.getLogger("fleetd.gateway")

_head = msgspec.json.Decoder(Head)


class _Retry(Exception):
    """The agent failed before sending a byte; ``reply`` is its 5xx answer, if any."""

    def __init__(self, message: str, reply: web.Response | None = None) -> None:
        super().__init__(message)
        self.reply = reply


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


class Gateway:
    """Forwards requests to the agents that ``pools`` and ``gate`` hand out."""

    def __init__(
        self,
        pools: Pools,
        gate: Gate,
        registry: Registry,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        self_id: str,
    ) -> None:
        self.pools = pools
        self.gate = gate
        self.registry = registry
        self.metrics = metrics
        self.session = session
        self.self_id = self_id
        """This coordinator's instance id, which every forwarded request carries."""
        self._requests: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._flights: dict[str, set[proxy.Flight]] = {}
        self.stopping = False
        self._overload_logged = -60.0
        self._idle = asyncio.Event()
        """Set once stopping and no request is in flight on any agent."""

    def can_serve(self, model: str) -> bool:
        """Some ready agent can take a request for ``model`` now."""
        return self.pools.can_serve(model)

    # -- agents that fall silent -----------------------------------------------------------

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
        self.pools.mark_suspect(a.id, why)
        waiting = [f for f in self._flights.get(a.id, ()) if f.upstream is None]
        if waiting:
            log.warning("moving %d request(s) waiting on agent %s elsewhere", len(waiting), a.id)
        error = aiohttp.ClientConnectionError(why)
        for flight in waiting:
            flight.abort(error)

    async def stop(self, grace_s: float) -> None:
        """On shutdown: requests waiting in the gate get 503 ``shutting_down`` now, requests
        in flight get ``grace_s`` to finish, then are ended with an error saying why."""
        self.stopping = True
        self.gate.stop()
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

    async def forward(
        self, request: web.Request, body: bytes, model: str, meter: Meter
    ) -> web.StreamResponse:
        """Send the request to a ready agent and relay its reply (through ``meter``); one
        failover before the first byte, onto another candidate, when the agent fails or
        answers 5xx. With no other candidate the request waits in the gate for one (at most
        ``queue_timeout_s``) before the failure is relayed."""
        path = request.path
        started = time.monotonic()
        key = meter.key.id
        try:
            agent_id = await self.gate.acquire(model, key)
        except ApiError as e:
            self._count(path, e.code)
            raise
        headers = proxy.request_headers(request.headers)
        headers[loops.HEADER] = loops.forward_mark(request, self.self_id)
        retried = False
        while True:
            try:
                return await self._attempt(request, agent_id, body, headers, started, meter)
            except _Retry as failure:
                if self.stopping:
                    self._count(path, "shutting_down")
                    raise stopping() from None
                self.pools.mark_suspect(agent_id, str(failure))
                next_id = None
                if not retried:
                    next_id = self.pools.pick(model)
                    if next_id is None and self.gate.has_room():
                        next_id = await self.gate.wait(model, key)
                if next_id is None:
                    self._count(path, "agent_failed")
                    if failure.reply is not None:
                        return failure.reply
                    raise ApiError(502, "agent_unavailable", str(failure)) from None
                agent_id, retried = next_id, True

    async def _attempt(
        self,
        request: web.Request,
        agent_id: str,
        body: bytes,
        headers: CIMultiDict[str],
        started: float,
        meter: Meter,
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
                upstream = await self.session.request(
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
            meter.agent = agent_id
            try:
                if upstream.status >= 500:
                    reply = await _reply(upstream)
                    outcome = proxy.OK  # read whole: the connection can be reused
                    raise _Retry(f"{what} answered HTTP {upstream.status}", reply)
                self._observe(path, time.monotonic() - started)
                resp, outcome = await proxy.relay(request, upstream, what, meter=meter)
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
            self.pools.end(agent_id)
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
    """A cleanup_ctx entry, after the HTTP client's, the inventory's and the distribution's."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, registry, metrics, dist = (
            app[SETTINGS],
            app[REGISTRY],
            app[METRICS],
            app[DISTRIBUTION],
        )
        pools = Pools(
            settings.supported_models,
            registry.agents,
            balancer,
            metrics,
            app[INVENTORY],
            dist.tasks.values(),
            settings.max_requests_per_agent,
        )
        gate = Gate(pools, settings.queue_limit, settings.queue_timeout_s, metrics)
        gateway = Gateway(pools, gate, registry, metrics, app[CLIENT], app[loops.SELF_ID])
        registry.on_change.append(pools.agent_changed)
        registry.on_offline.append(gateway.agent_offline)
        registry.on_silent.append(gateway.agent_silent)
        dist.on_task.append(pools.task_changed)
        app[GATEWAY] = gateway
        yield

    return ctx
