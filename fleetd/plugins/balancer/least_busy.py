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
    """A binary heap with lazy deletion: a change pushes a fresh entry and the old one is
    dropped when it surfaces, so every operation is O(log N) amortized. The heap is rebuilt
    from the live entries when stale ones outnumber them, keeping memory O(N)."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: dict[str, _Entry] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def _push(self, entry: _Entry) -> None:
        self._live[entry[5]] = entry
        heap = self._heap
        if len(heap) > 2 * len(self._live) + 64:
            heap[:] = self._live.values()
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, entry)

    def update(self, agent_id: str, load: Load) -> None:
        old = self._live.get(agent_id)
        in_flight = load.in_flight if old is None else old[0]
        key = (in_flight, load.reported_in_flight, load.utilization, -load.memory_free_bytes)
        if old is not None and old[:4] == key:
            return
        self._push((*key, next(self._seq), agent_id))

    def discard(self, agent_id: str) -> None:
        self._live.pop(agent_id, None)

    def _shift(self, agent_id: str, delta: int) -> None:
        old = self._live.get(agent_id)
        if old is not None:
            self._push((max(0, old[0] + delta), old[1], old[2], old[3], next(self._seq), agent_id))

    def started(self, agent_id: str) -> None:
        self._shift(agent_id, 1)

    def finished(self, agent_id: str) -> None:
        self._shift(agent_id, -1)

    def pick(self) -> str | None:
        heap, live = self._heap, self._live
        while heap:
            top = heap[0]
            if live.get(top[5]) is top:
                return top[5]
            heapq.heappop(heap)
        return None
