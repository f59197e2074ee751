"""A download task's state machine and the distribution around it, without processes: the
transitions, late words on earlier attempts, cancels racing orders and progress reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fleetd.coordinator import orders, task_state
from fleetd.coordinator.distribution import Distribution
from fleetd.coordinator.inventory import Inventory
from fleetd.coordinator.registry import Registry
from fleetd.core.events import EventBus
from fleetd.core.gpu import Gpu
from fleetd.core.store import SqliteStore
from fleetd.core.wire import Agent, ProgressReport, Registration, Task, TaskUpdate, next_revision

M = "llama3.2:1b"


def agent(status: str = "online") -> Agent:
    return Agent(id="a1", name="gpu-1", url="http://x", status=status)  # type: ignore[arg-type]


def update(status: str, attempt: int = 0, done: int = 0, total: int = 100) -> TaskUpdate:
    return TaskUpdate(
        task_id="t",
        status=status,  # type: ignore[arg-type]
        attempt=attempt,
        completed_bytes=done,
        total_bytes=total,
        speed_bps=10.0 if status == "downloading" else 0.0,
    )


# -- the pure transitions ----------------------------------------------------------------


def test_a_task_runs_from_queued_to_completed() -> None:
    t = task_state.new(agent(), M)
    assert t.status == "queued" and t.attempt == 0
    assert task_state.take(t, update("downloading", done=40)) == "progress"
    assert t.status == "downloading" and t.progress == 0.4 and t.started_at is not None
    assert task_state.take(t, update("completed", done=90)) == "ended"
    assert t.status == "completed" and t.progress == 1.0 and t.completed_bytes == 100
    assert t.finished_at is not None and t.speed_bps == 0 and t.error is None


def test_a_task_for_an_offline_agent_waits_and_keeps_its_bytes() -> None:
    assert task_state.new(agent("offline"), M).status == "waiting"
    t = task_state.new(agent(), M)
    task_state.take(t, update("downloading", done=30))
    task_state.wait(t)
    assert t.status == "waiting" and t.completed_bytes == 30 and t.speed_bps == 0


def test_failure_keeps_its_reason_and_retry_starts_a_new_attempt() -> None:
    t = task_state.new(agent(), M)
    task_state.take(t, update("downloading", done=30))
    failed = msgspec.structs.replace(update("failed"), error="disk full")
    assert task_state.take(t, failed) == "ended"
    assert t.status == "failed" and t.error == "disk full"
    task_state.retry(t, online=False)
    assert (t.status, t.attempt, t.progress, t.completed_bytes) == ("waiting", 1, 0.0, 0)
    assert t.error is None and t.started_at is None and t.finished_at is None


def test_a_late_word_on_an_earlier_attempt_changes_nothing() -> None:
    t = task_state.new(agent(), M)
    task_state.end(t, "failed", "cut")
    task_state.retry(t, online=True)
    before = msgspec.structs.asdict(t)
    assert task_state.take(t, update("completed", attempt=0)) == "stale"
    assert task_state.take(t, update("downloading", attempt=0, done=99)) == "stale"
    assert msgspec.structs.asdict(t) == before
    assert task_state.take(t, update("downloading", attempt=1, done=5)) == "progress"


def test_words_after_the_end() -> None:
    done = task_state.new(agent(), M)
    task_state.end(done, "completed", None)
    assert task_state.take(done, update("downloading")) == "stale"
    cancelled = task_state.new(agent(), M)
    task_state.end(cancelled, "cancelled", "ignored")
    assert cancelled.error is None
    # Still running on the agent: it must stop; its own end is simply taken note of.
    assert task_state.take(cancelled, update("downloading")) == "drop"
    assert task_state.take(cancelled, update("completed")) == "stale"
    assert cancelled.status == "cancelled"


# -- the distribution around it ------------------------------------------------------------


class FakeAgentApi:
    """Stands in for ``Orders._call``: records calls; an order's reply waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.reply_status = "queued"

    async def __call__(
        self, agent: Agent, method: str, path: str, payload: Any, timeout: Any
    ) -> tuple[int, bytes]:
        self.calls.append((method, path))
        if path == "/tasks":
            await self.release.wait()
            return 200, msgspec.json.encode(
                TaskUpdate(task_id=payload.task_id, status=self.reply_status)  # type: ignore[arg-type]
            )
        if path == "/models":
            return 200, b'{"models": []}'
        return 200, b"{}"


@pytest.fixture
async def dist(tmp_path: Path) -> AsyncIterator[tuple[Distribution, FakeAgentApi]]:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    events = EventBus()
    registry = Registry(store, events, heartbeat_timeout_s=30)
    inventory = Inventory(store)
    d = Distribution(store, events, registry, inventory, [], None, lambda: "token")  # type: ignore[arg-type]
    api = FakeAgentApi()
    d.orders._call = api  # type: ignore[method-assign]
    reg = Registration(
        name="gpu-1", url="http://x", gpus=[Gpu(name="g", memory_bytes=1)], models=[]
    )
    await registry.register(reg, total_models=0)
    yield d, api
    api.release.set()
    await d.close()
    await store.close()


async def until(check: Any) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_a_cancel_while_the_order_is_on_its_way_is_sent_to_the_agent(
    dist: tuple[Distribution, FakeAgentApi],
) -> None:
    d, api = dist
    a = next(iter(d.registry.agents.values()))
    t = d.create(a, M)
    await d.launch([t])
    await until(lambda: ("POST", "/tasks") in api.calls)
    d.cancel(t)  # the order is still on its way
    api.release.set()  # the agent accepts it: it must be told to stop
    await until(lambda: ("POST", f"/tasks/{t.id}/cancel") in api.calls)
    assert t.status == "cancelled"


async def test_progress_for_a_cancelled_task_asks_the_agent_to_stop_it(
    dist: tuple[Distribution, FakeAgentApi],
) -> None:
    d, api = dist
    api.release.set()
    a = next(iter(d.registry.agents.values()))
    t = d.create(a, M)
    d.cancel(t)
    report = ProgressReport(tasks=[TaskUpdate(task_id=t.id, status="downloading")])
    assert d.ingest(a.id, report) == [t.id]
    unknown = ProgressReport(tasks=[TaskUpdate(task_id="nope", status="downloading")])
    assert d.ingest(a.id, unknown) == ["nope"]  # unknown here: the agent drops it too
    assert d.ingest("other-agent", report) == [t.id]  # not that agent's task


async def test_a_retried_task_ignores_the_late_end_of_its_first_attempt(
    dist: tuple[Distribution, FakeAgentApi],
) -> None:
    d, api = dist
    api.release.set()
    a = next(iter(d.registry.agents.values()))
    t = d.create(a, M)
    seen: list[str] = []
    d.on_task.append(lambda x: seen.append(x.status))
    d.apply(a.id, TaskUpdate(task_id=t.id, status="failed", error="cut"))
    d.retry(t)
    late = TaskUpdate(task_id=t.id, status="completed", attempt=0, total_bytes=5)
    assert d.apply(a.id, late)  # acknowledged, not acted on
    assert t.status == "queued" and t.attempt == 1 and not d.inventory.has(a.id, M)
    assert d.active_for(M) == {a.id: t}
    d.apply(a.id, TaskUpdate(task_id=t.id, status="completed", attempt=1, total_bytes=5))
    assert t.status == "completed" and d.inventory.has(a.id, M) and d.active_for(M) == {}
    assert seen == ["failed", "queued", "completed"]


async def test_an_order_refused_for_good_fails_the_task(
    dist: tuple[Distribution, FakeAgentApi],
) -> None:
    d, _ = dist

    async def refuse(*args: Any) -> tuple[int, bytes]:
        return 400, b'{"error": {"message": "no such model", "code": "bad_request"}}'

    d.orders._call = refuse  # type: ignore[method-assign]
    a = next(iter(d.registry.agents.values()))
    t = d.create(a, M)
    await d.launch([t])
    await until(lambda: t.status == "failed")
    assert t.error is not None and "refused the order: no such model" in t.error


# -- duties of the coordinator that leads, when several share a database --------------------


@pytest.fixture
def leader(
    dist: tuple[Distribution, FakeAgentApi], monkeypatch: pytest.MonkeyPatch
) -> tuple[Distribution, FakeAgentApi]:
    """``dist``, whose agent takes orders at once and whose expected orders fall due at
    once instead of after ``ORPHAN_S``."""
    monkeypatch.setattr(orders, "ORPHAN_S", 0.0)
    dist[1].release.set()
    return dist


async def _resend_due(d: Distribution, api: FakeAgentApi) -> bool:
    """Run the leader's retry sweep once; whether it sent an order (dispatching one starts
    a job at once, so "not sent" needs no waiting)."""
    d.orders.resend_due(d.tasks.get)
    if not d.orders.jobs:
        return False
    await until(lambda: ("POST", "/tasks") in api.calls)
    return True


def _waiting_elsewhere(d: Distribution, a: Agent) -> Task:
    """A task another coordinator wrote as waiting for ``a``, as this one reads it."""
    t = task_state.new(msgspec.structs.replace(a, status="offline"), M)
    t.revision = next_revision()
    d.apply_remote(t)
    return t


async def test_a_new_leader_orders_tasks_left_waiting_for_an_agent_that_is_back(
    leader: tuple[Distribution, FakeAgentApi],
) -> None:
    # The agent came back through a coordinator that died before re-sending the order.
    d, api = leader
    d.leading = False
    t = _waiting_elsewhere(d, next(iter(d.registry.agents.values())))
    assert not await _resend_due(d, api)  # not this coordinator's duty yet
    assert ("POST", "/tasks") not in api.calls
    d.leading = True
    d.take_over()
    assert await _resend_due(d, api)
    assert t.status == "queued"  # the agent took the order


async def test_the_leader_orders_waiting_tasks_of_an_agent_back_through_another(
    leader: tuple[Distribution, FakeAgentApi],
) -> None:
    d, api = leader
    a = next(iter(d.registry.agents.values()))
    d.registry.apply_remote(msgspec.structs.replace(a, status="offline", revision=next_revision()))
    t = _waiting_elsewhere(d, a)
    assert not await _resend_due(d, api)  # nothing is sent to an offline agent
    assert ("POST", "/tasks") not in api.calls
    d.registry.apply_remote(msgspec.structs.replace(a, status="online", revision=next_revision()))
    assert await _resend_due(d, api)
    assert t.status == "queued"
