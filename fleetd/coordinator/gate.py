"""The gate: requests no ready agent can take yet wait here, in a bounded queue, for at most
``queue_timeout_s``; an agent joining a pool (or, under ``max_requests_per_agent``, ending a
request) serves them, round-robin across API keys and in arrival order within a key
(fairgate.py holds the queue).

Clients of a fleet that is starting (models still loading after a restart) would otherwise
get errors for a few seconds; a short wait turns those into slow answers. The queue is
bounded so that a fleet that never becomes ready answers 503 ``models_starting`` at once
instead of holding every client. A fleet whose agents are all full answers 503
``fleet_busy`` when the wait ends.
"""

from __future__ import annotations

import asyncio

from fleetd.coordinator.fairgate import FairQueue, Waiter
from fleetd.coordinator.metrics import Metrics
from fleetd.coordinator.pools import Pools
from fleetd.core import proxy
from fleetd.core.errors import ApiError, not_found

RETRY_AFTER_S = 5
"""What a 503 ``models_starting`` tells clients to wait before trying again."""


def unknown_model(model: str) -> ApiError:
    """Worded as Ollama words it, so clients that match the text keep working."""
    return not_found(f'model "{model}" not found, try pulling it first', code="model_not_found")


def fleet_busy(message: str) -> ApiError:
    return ApiError(503, "fleet_busy", message, headers={"Retry-After": str(RETRY_AFTER_S)})


STOPPING = "the coordinator is shutting down; retry the request in a moment"


def stopping() -> ApiError:
    return proxy.shutting_down(STOPPING)


def models_starting(message: str) -> ApiError:
    return ApiError(503, "models_starting", message, headers={"Retry-After": str(RETRY_AFTER_S)})


def no_agent_has_model(model: str, offline: list[str]) -> ApiError:
    """Waiting would not help: only agents that are offline (or gone) ever had the model."""
    held = f" (only offline agents have it: {', '.join(offline[:5])})" if offline else ""
    return ApiError(
        503,
        "no_agent_has_model",
        f"no online agent has {model}{held}; it is not a supported model and no download of "
        "it is under way, so no agent can serve it until one has it (pull it with /api/pull)",
    )


class Gate:
    """The wait queue of one coordinator, in front of its pools."""

    def __init__(self, pools: Pools, limit: int, timeout_s: float, metrics: Metrics) -> None:
        self.pools = pools
        self.limit = limit
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._waiters = FairQueue()
        self.stopping = False
        pools.on_room.append(self._wake)

    @property
    def waiting(self) -> int:
        """Requests waiting in the gate now."""
        return len(self._waiters)

    def stop(self) -> None:
        """On shutdown: every waiting request gets 503 ``shutting_down`` now, and new ones too."""
        self.stopping = True
        for fut in self._waiters.clear():
            if not fut.done():
                fut.set_exception(stopping())
        self.metrics.queue_depth.set(0)

    def has_room(self) -> bool:
        return len(self._waiters) < self.limit

    def _wake(self) -> None:
        """Serve waiting requests round-robin across keys, each as soon as its model has a
        candidate."""
        if not self._waiters:
            return
        self._waiters.serve(self.pools.pick)
        self.metrics.queue_depth.set(len(self._waiters))

    async def acquire(self, model: str, key: str = "") -> str:
        """A ready agent for ``model``, its in-flight count already raised; waits in the gate
        while there is none. 404 for a model nobody has, 503 when the queue or the wait ends."""
        if self.stopping:
            raise stopping()
        agent_id = self.pools.pick(model)
        if agent_id is not None:
            return agent_id
        if not self.pools.has_model(model):
            raise unknown_model(model)
        offline = self.pools.offline_holders(model)
        if offline is not None:
            raise no_agent_has_model(model, offline)
        if not self.has_room():
            raise models_starting(
                f"no agent is ready for {model} yet and {len(self._waiters)} requests are "
                "already waiting (coordinator.queue_limit); models are starting, retry later"
            )
        agent_id = await self.wait(model, key)
        if agent_id is None:
            if self.pools.can_serve(model):
                raise fleet_busy(
                    f"every agent serving {model} had coordinator.max_requests_per_agent "
                    f"requests in flight for {self.timeout_s:g}s; retry later"
                )
            raise models_starting(
                f"no agent became ready for {model} within {self.timeout_s:g}s "
                "(coordinator.queue_timeout_s); models are starting, retry later"
            )
        return agent_id

    async def wait(self, model: str, key: str = "") -> str | None:
        """Wait in the gate, at most ``timeout_s``, for a candidate for ``model``; ``key`` is
        the caller's API key id (its turn in the fair queue)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = self._waiters.add(key, model, fut)
        self.metrics.queue_depth.set(len(self._waiters))
        try:
            await asyncio.wait((fut,), timeout=self.timeout_s)
        except asyncio.CancelledError:
            if fut.done() and fut.exception() is None:
                self.pools.end(fut.result())  # woken just as its client left
            else:
                fut.cancel()
                self._discard(entry)
            raise
        if fut.done():
            return fut.result()
        fut.cancel()
        self._discard(entry)
        return None

    def _discard(self, entry: Waiter) -> None:
        if self._waiters.discard(entry):
            self.metrics.queue_depth.set(len(self._waiters))
