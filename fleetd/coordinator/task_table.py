"""The coordinator's download tasks in memory, their index of unfinished tasks, and their
writes to the store: a new task at once (``save_new``), every later change in batches
(``flush``, every half second and on close), so a progress report never waits for the
database."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from fleetd.core.store import Store
from fleetd.core.wire import TERMINAL, Task, next_revision

_NONE: dict[str, Task] = {}


class TaskTable:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._tasks: dict[str, Task] = {}
        self._active: dict[str, dict[str, Task]] = {}
        """Model -> agent id -> its unfinished task for the model (at most one)."""
        self._dirty: set[str] = set()

    async def load(self) -> list[Task]:
        """The stored tasks; returns the unfinished ones."""
        for t in await self.store.load_tasks():
            self._tasks[t.id] = t
            self._index(t)
        return [t for t in self._tasks.values() if t.status not in TERMINAL]

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def values(self) -> Iterable[Task]:
        return self._tasks.values()

    def __len__(self) -> int:
        return len(self._tasks)

    def active_for(self, model: str) -> Mapping[str, Task]:
        """Agent id -> its unfinished task for ``model``: a live read-only view (O(1), as
        the sync of each of thousands of agents registering at once asks for it)."""
        return MappingProxyType(self._active.get(model, _NONE))

    def active_of(self, agent_id: str) -> Iterator[Task]:
        """The agent's unfinished tasks (O(tasks): only when an agent comes or goes)."""
        return (
            t
            for t in list(self._tasks.values())
            if t.agent_id == agent_id and t.status not in TERMINAL
        )

    def add(self, t: Task) -> None:
        """A new task; ``changed`` next."""
        self._tasks[t.id] = t

    def changed(self, t: Task) -> None:
        """Call after every change of ``t``: a new revision, re-indexed, written soon."""
        t.revision = next_revision()
        self._dirty.add(t.id)
        self._index(t)

    def taken(self, t: Task) -> None:
        """``t`` is another coordinator's copy, just read from the store: indexed, neither
        given a revision of ours nor written again."""
        self._tasks[t.id] = t
        self._index(t)

    def _index(self, t: Task) -> None:
        by_agent = self._active.get(t.model)
        if t.status not in TERMINAL:
            if by_agent is None:
                by_agent = self._active[t.model] = {}
            by_agent[t.agent_id] = t
        elif by_agent is not None and by_agent.get(t.agent_id) is t:
            del by_agent[t.agent_id]
            if not by_agent:
                del self._active[t.model]

    async def save_new(self, tasks: list[Task]) -> None:
        await self.store.save_tasks(tasks)

    async def flush(self) -> None:
        if not self._dirty:
            return
        batch = [self._tasks[i] for i in self._dirty if i in self._tasks]
        self._dirty.clear()
        try:
            await self.store.save_tasks(batch)
        except BaseException:
            self._dirty.update(t.id for t in batch)  # written by the next flush that works
            raise
