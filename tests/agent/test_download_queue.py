"""The agent's download queue on its own: order, concurrency limit, cancel and restart, with a
stand-in puller that finishes a download when the test says so (no Ollama, no coordinator)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetd.agent.download_entry import Entry
from fleetd.agent.download_queue import DownloadQueue
from fleetd.agent.puller import Failed
from fleetd.config import AgentConfig
from fleetd.core.wire import Order


class StandInPuller:
    """Each pull waits until the test finishes or fails it; the test can wait for a start."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self._outcomes: dict[str, asyncio.Future[str | None]] = {}
        self._start = asyncio.Condition()

    def _outcome(self, task_id: str) -> asyncio.Future[str | None]:
        return self._outcomes.setdefault(task_id, asyncio.get_running_loop().create_future())

    async def pull(self, e: Entry, ledger: object) -> None:
        async with self._start:
            self.started.append(e.task_id)
            self._start.notify_all()
        outcome = self._outcome(e.task_id)
        try:
            error = await outcome
        except asyncio.CancelledError:
            self.cancelled.append(e.task_id)
            raise
        del self._outcomes[e.task_id]  # a retry of the task waits for a new outcome
        if error is not None:
            raise Failed(error)
        e.total_bytes = e.completed_bytes = 100

    async def wait_started(self, task_id: str, times: int = 1) -> None:
        async with self._start:
            await asyncio.wait_for(
                self._start.wait_for(lambda: self.started.count(task_id) >= times), 10
            )

    def finish(self, task_id: str, error: str | None = None) -> None:
        self._outcome(task_id).set_result(error)


def order(task_id: str, **kw: object) -> Order:
    return Order(task_id=task_id, model=f"m-{task_id}:latest", **kw)  # type: ignore[arg-type]


def statuses(q: DownloadQueue) -> dict[str, str]:
    return {task_id: e.status for task_id, e in q.entries.items()}


async def settled(q: DownloadQueue, task_id: str) -> None:
    """Until the task's run has ended and the queue has scheduled what comes next."""
    task = q.running.get(task_id)
    if task is not None:
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "downloads.json"


@pytest.fixture
async def puller() -> StandInPuller:
    return StandInPuller()


@contextlib.asynccontextmanager
async def opened(path: Path, puller: StandInPuller, limit: int) -> AsyncIterator[DownloadQueue]:
    q = DownloadQueue(AgentConfig(max_concurrent_downloads=limit), path, puller)  # type: ignore[arg-type]
    async with q.opened():
        yield q


async def test_orders_run_in_the_order_they_came(path: Path, puller: StandInPuller) -> None:
    async with opened(path, puller, limit=1) as q:
        for t in ("a", "b", "c"):
            q.submit(order(t))
        await puller.wait_started("a")
        assert statuses(q) == {"a": "downloading", "b": "queued", "c": "queued"}
        puller.finish("a")
        await settled(q, "a")
        await puller.wait_started("b")
        puller.finish("b")
        await settled(q, "b")
        await puller.wait_started("c")
        puller.finish("c")
        await settled(q, "c")
        assert puller.started == ["a", "b", "c"]
        assert statuses(q) == {"a": "completed", "b": "completed", "c": "completed"}


async def test_at_most_max_concurrent_downloads_run(path: Path, puller: StandInPuller) -> None:
    async with opened(path, puller, limit=2) as q:
        for t in ("a", "b", "c", "d"):
            q.submit(order(t))
        await puller.wait_started("b")
        assert sorted(q.running) == ["a", "b"]
        assert statuses(q)["c"] == statuses(q)["d"] == "queued"
        puller.finish("b", error="no space left on device")
        await settled(q, "b")
        await puller.wait_started("c")
        assert sorted(q.running) == ["a", "c"]
        assert q.entries["b"].status == "failed"
        assert q.entries["b"].error == "no space left on device"
        assert q.entries["d"].status == "queued"


async def test_cancel_stops_a_running_pull_and_skips_a_queued_one(
    path: Path, puller: StandInPuller
) -> None:
    async with opened(path, puller, limit=1) as q:
        for t in ("a", "b", "c"):
            q.submit(order(t))
        await puller.wait_started("a")
        cancelled_b = q.cancel("b")
        assert cancelled_b is not None and cancelled_b.status == "cancelled"
        cancelled_a = q.cancel("a")
        assert cancelled_a is not None and cancelled_a.status == "cancelled"
        await puller.wait_started("c")
        assert puller.cancelled == ["a"]
        assert puller.started == ["a", "c"]
        assert statuses(q) == {"a": "cancelled", "b": "cancelled", "c": "downloading"}
        assert q.cancel("nope") is None


async def test_a_repeated_order_is_answered_with_the_task_as_it_stands(
    path: Path, puller: StandInPuller
) -> None:
    async with opened(path, puller, limit=1) as q:
        q.submit(order("a"))
        await puller.wait_started("a")
        again = q.submit(order("a"))
        assert again.status == "downloading"
        assert puller.started == ["a"]
        puller.finish("a", error="pull failed")
        await settled(q, "a")
        assert q.submit(order("a")).status == "failed"
        retried = q.submit(order("a", attempt=1))
        assert retried.status in ("queued", "downloading")
        await puller.wait_started("a", times=2)
        assert puller.started == ["a", "a"]


async def test_the_queue_survives_a_restart_in_its_order(path: Path) -> None:
    first = StandInPuller()
    async with opened(path, first, limit=1) as q:
        for t in ("a", "b", "c"):
            q.submit(order(t))
        await first.wait_started("a")
        first.finish("a")
        await settled(q, "a")
        await first.wait_started("b")
    assert first.cancelled == ["b"]  # stopped by the shutdown, not finished
    saved = json.loads(await asyncio.to_thread(path.read_text))
    assert [(e["task_id"], e["status"]) for e in saved["entries"]] == [
        ("a", "completed"),
        ("b", "downloading"),
        ("c", "queued"),
    ]

    second = StandInPuller()
    async with opened(path, second, limit=1) as q:
        await second.wait_started("b")
        assert statuses(q) == {"a": "completed", "b": "downloading", "c": "queued"}
        second.finish("b")
        await settled(q, "b")
        await second.wait_started("c")
        assert second.started == ["b", "c"]
        # A finished task is still answered after the restart, not run again.
        assert q.submit(order("a")).status == "completed"


async def test_an_unreadable_queue_file_is_moved_aside(path: Path, puller: StandInPuller) -> None:
    await asyncio.to_thread(path.write_text, "{not json")
    async with opened(path, puller, limit=1) as q:
        assert q.entries == {}
    broken = await asyncio.to_thread(path.with_suffix(".broken").read_text)
    assert broken == "{not json"
