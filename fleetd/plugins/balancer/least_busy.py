"""``least-busy``: fewest requests in flight as counted by the coordinator; ties go to the
lighter heartbeat load (agent-reported requests, GPU utilization), then to more free GPU memory,
then to the candidate that was chosen least recently."""

from __future__ import annotations

import heapq
import itertools

from fleetd.core.balancing import Load

# (in_flight, reported_in_flight, utilization, -memory_free_bytes, seq, agent_id)
_Entry = tuple[int, int, float, int, int, str]


class LeastBusy:
    """A binary heap with lazy deletion, ordered when a pick needs it.

    A change records the agent's fresh entry and leaves the heap alone; the next ``pick``
    pushes the entries changed since the last one, or rebuilds the heap from the live
    entries in O(N) when they are many. Heartbeats change every agent's figures a thousand
    times a second at 5,000 agents, while picks may be far rarer: each change costs a dict
    write instead of a heap push per model pool, and a pick after a quiet spell pays at most
    one rebuild (about a millisecond at 5,000 agents). An old entry is dropped when it
    surfaces. Memory stays O(N): the changes waiting are bounded by the live entries."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: dict[str, _Entry] = {}
        self._changed: list[_Entry] = []
        """Live entries not in the heap yet, oldest first (unless ``_rebuild``)."""
        self._rebuild = False
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def _set(self, entry: _Entry) -> None:
        self._live[entry[5]] = entry
        if not self._rebuild:
            self._changed.append(entry)
            if len(self._changed) > len(self._live) // 8 + 8:
                self._rebuild = True  # cheaper to heapify everything than to push these
                self._changed.clear()

    def _settle(self) -> None:
        heap, live = self._heap, self._live
        if self._rebuild or len(heap) > 2 * len(live) + 64:
            heap[:] = live.values()
            heapq.heapify(heap)
        else:
            for entry in self._changed:
                if live.get(entry[5]) is entry:
                    heapq.heappush(heap, entry)
        self._changed.clear()
        self._rebuild = False

    def update(self, agent_id: str, load: Load) -> None:
        old = self._live.get(agent_id)
        in_flight = load.in_flight if old is None else old[0]
        key = (in_flight, load.reported_in_flight, load.utilization, -load.memory_free_bytes)
        if old is not None and old[:4] == key:
            return
        self._set((*key, next(self._seq), agent_id))

    def discard(self, agent_id: str) -> None:
        self._live.pop(agent_id, None)

    def _shift(self, agent_id: str, delta: int) -> None:
        old = self._live.get(agent_id)
        if old is not None:
            self._set((max(0, old[0] + delta), old[1], old[2], old[3], next(self._seq), agent_id))

    def started(self, agent_id: str) -> None:
        self._shift(agent_id, 1)

    def finished(self, agent_id: str) -> None:
        self._shift(agent_id, -1)

    def pick(self) -> str | None:
        if self._changed or self._rebuild:
            self._settle()
        heap, live = self._heap, self._live
        while heap:
            top = heap[0]
            if live.get(top[5]) is top:
                return top[5]
            heapq.heappop(heap)
        return None
