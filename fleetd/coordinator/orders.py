"""Order delivery: the coordinator's calls to an agent's API (``{agent}/fleetd/…``).

An order (``POST /fleetd/tasks``) is idempotent on the agent, so it is simply sent again
whenever the coordinator cannot be sure the agent has it: it failed (backing off 1, 2, 5, 10,
30 s), the agent registered again or came back, the coordinator restarted, or a new task was
not dispatched within ``ORPHAN_S``. Orders to one agent go one at a time, so its queue keeps
the order in which tasks were created. Per task, all that delivery needs is one small
``Delivery`` object, dropped when the task ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import msgspec

from fleetd.coordinator.registry import Registry
from fleetd.core.background import Jobs
from fleetd.core.ollama import error_message
from fleetd.core.wire import (
    AGENT_PREFIX,
    TERMINAL,
    Agent,
    InstalledModel,
    ModelList,
    Order,
    Task,
    TaskUpdate,
)

log = logging.getLogger("fleetd.distribution")

ORDER_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=3)
MODELS_TIMEOUT = aiohttp.ClientTimeout(total=2.5, connect=2)
"""Short enough that ``GET /api/agents/{id}/models`` answers within 3 s from the cache."""
RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
ORPHAN_S = 3.0
"""A created task not dispatched within this time is ordered by the retry sweep."""


class AgentUnreachable(Exception):
    """The agent's API did not answer (or answered an error); the message says how."""


@dataclass
class Delivery:
    """Where one task's order stands."""

    retry_at: float | None = None
    """Monotonic time to send the order (again); None while none is due."""
    tries: int = 0
    """Failed sends in a row (the backoff step)."""
    sending: bool = False


Accept = Callable[[str, TaskUpdate], bool]
"""Takes the agent's reply to an order; False when the agent must drop the task."""
Refuse = Callable[[Task, str], None]
"""The agent refused the order for good (a 4xx that no resend can change)."""


class Orders:
    def __init__(
        self,
        registry: Registry,
        session: aiohttp.ClientSession,
        agent_token: Callable[[], str],
        accept: Accept,
        refuse: Refuse,
    ) -> None:
        self.registry = registry
        self.session = session
        self.agent_token = agent_token
        """Read at each call: with PostgreSQL the token may change while running."""
        self.accept = accept
        self.refuse = refuse
        self.jobs = Jobs("orders")
        self._deliveries: dict[str, Delivery] = {}
        """Task id -> its delivery, for unfinished tasks only."""
        self._locks: dict[str, asyncio.Lock] = {}
        """Agent id -> held while an order is on its way to it."""

    def _online(self, agent_id: str) -> bool:
        a = self.registry.get(agent_id)
        return a is not None and a.status == "online"

    def _of(self, task_id: str) -> Delivery:
        d = self._deliveries.get(task_id)
        if d is None:
            d = self._deliveries[task_id] = Delivery()
        return d

    def expect(self, t: Task) -> None:
        """``t`` is new or retried: order it in ``ORPHAN_S`` unless dispatched before."""
        self._of(t.id).retry_at = time.monotonic() + ORPHAN_S

    def forget(self, task_id: str) -> None:
        """The task ended: nothing more to deliver."""
        self._deliveries.pop(task_id, None)

    def dispatch(self, t: Task) -> None:
        """Send ``t``'s order in the background, unless one is already on its way."""
        d = self._deliveries.get(t.id)
        if (d is not None and d.sending) or t.status in TERMINAL or not self._online(t.agent_id):
            return
        d = self._of(t.id)
        d.sending, d.retry_at = True, None
        self.jobs.spawn(self._send(t, d))

    def resend_due(self, tasks: Callable[[str], Task | None]) -> None:
        """Dispatch every order whose time has come (and whose agent is online)."""
        now = time.monotonic()
        for task_id, d in list(self._deliveries.items()):
            t = tasks(task_id)
            if t is None or t.status in TERMINAL:
                self._deliveries.pop(task_id, None)
            elif d.retry_at is not None and d.retry_at <= now and self._online(t.agent_id):
                self.dispatch(t)

    async def _send(self, t: Task, d: Delivery) -> None:
        try:
            agent = self.registry.get(t.agent_id)
            if agent is None:
                return
            order = Order(
                task_id=t.id, model=t.model, redownload=t.redownload, attempt=t.attempt, kind=t.kind
            )
            # Deletes have their own path: an older agent answers 404 there instead of taking
            # the order for a download.
            path = "/deletes" if t.kind == "delete" else "/tasks"
            try:
                async with self._locks.setdefault(agent.id, asyncio.Lock()):
                    status, body = await self._call(agent, "POST", path, order, ORDER_TIMEOUT)
            except AgentUnreachable as e:
                self._later(t, d, str(e))
                return
            if status == 200:
                try:
                    update = msgspec.json.decode(body, type=TaskUpdate)
                except msgspec.DecodeError as e:
                    self._later(t, d, f"unreadable reply from agent {agent.id}: {e}")
                    return
                d.tries = 0
                if not self.accept(agent.id, update):  # cancelled while the order was on its way
                    await self.send_cancel(t)
            elif t.kind == "delete" and status in (404, 405):
                self.refuse(t, f"agent {agent.name} cannot delete models (upgrade its fleetd)")
            elif 400 <= status < 500 and status not in (404, 408, 429):
                self.refuse(t, f"agent {agent.name} refused the order: {error_message(body)}")
            else:
                self._later(t, d, f"agent {agent.id}: HTTP {status}: {error_message(body)}")
        finally:
            d.sending = False

    def _later(self, t: Task, d: Delivery, reason: str) -> None:
        if self._deliveries.get(t.id) is not d:
            return  # ended meanwhile (or retried, with a delivery of its own): not resent
        delay = RETRY_BACKOFF_S[min(d.tries, len(RETRY_BACKOFF_S) - 1)]
        d.tries += 1
        d.retry_at = time.monotonic() + delay
        log.warning(
            "order for task %s (%s) not delivered: %s; retrying in %.0fs",
            t.id,
            t.model,
            reason,
            delay,
        )

    def cancel(self, t: Task) -> None:
        """Tell the agent to stop ``t`` (in the background; best effort)."""
        self.forget(t.id)
        self.jobs.spawn(self.send_cancel(t))

    async def send_cancel(self, t: Task) -> None:
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
        """The agent's installed models, asked of the agent itself."""
        status, body = await self._call(agent, "GET", "/models", None, MODELS_TIMEOUT)
        if status != 200:
            raise AgentUnreachable(
                f"agent {agent.name} ({agent.id}): HTTP {status}: {error_message(body)}"
            )
        try:
            return msgspec.json.decode(body, type=ModelList).models
        except msgspec.DecodeError as e:
            raise AgentUnreachable(f"agent {agent.id}: unreadable model list: {e}") from None

    async def _call(
        self,
        agent: Agent,
        method: str,
        path: str,
        payload: msgspec.Struct | None,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.agent_token()}"}
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
