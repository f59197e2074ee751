"""When each online agent was last heard from: who has timed out, who has fallen silent."""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

SILENT_AFTER = 2.5
"""Heartbeat intervals without contact after which an agent is suspect: two heartbeats
missed, and half an interval for a late one."""
SILENT_FLOOR_S = 2.0
"""Never suspect sooner: a busy host can stall an agent's event loop for a second."""


def silent_after_s(heartbeat_interval_s: float) -> float:
    return max(SILENT_AFTER * heartbeat_interval_s, SILENT_FLOOR_S)


class Liveness:
    """Agent ids only: what an agent is, and what its going offline means, is the registry's."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout_s
        self.clock = clock
        """Monotonic seconds: when agents were heard from, and when they fall silent."""
        self._seen: OrderedDict[str, float] = OrderedDict()
        """Online agent id -> monotonic time of its last contact, oldest contact first, so the
        sweep reads only the agents that expired instead of scanning the fleet."""
        self._watch: list[tuple[float, str]] = []
        """Heap of (when it is silent unless heard from, agent id): at most one entry per
        online agent, pushed back on expiry if it was heard from meanwhile."""
        self._watched: set[str] = set()

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._seen

    def heard(self, agent_id: str, heartbeat_interval_s: float) -> None:
        now = self._seen[agent_id] = self.clock()
        self._seen.move_to_end(agent_id)
        if agent_id not in self._watched:
            self._watched.add(agent_id)
            heapq.heappush(self._watch, (now + silent_after_s(heartbeat_interval_s), agent_id))

    def drop(self, agent_id: str) -> None:
        """No longer online here; its stale heap entry is discarded when it comes due."""
        self._seen.pop(agent_id, None)

    def expiring(self) -> list[str]:
        """Agents past the timeout, left in place (the caller may yet hear they are alive)."""
        deadline = self.clock() - self.timeout
        expiring = []
        for agent_id, seen in self._seen.items():
            if seen >= deadline:
                break
            expiring.append(agent_id)
        return expiring

    def expired(self) -> Iterator[str]:
        """Agents past the timeout, dropped as they are yielded; O(agents expired)."""
        deadline = self.clock() - self.timeout
        while self._seen:
            agent_id = next(iter(self._seen))
            if self._seen[agent_id] >= deadline:
                break
            del self._seen[agent_id]
            yield agent_id

    def silent(self, interval_of: Callable[[str], float | None]) -> list[tuple[str, float]]:
        """(agent id, seconds silent) of agents that missed two heartbeats since last asked;
        ``interval_of`` gives an online agent's heartbeat interval, None for any other.
        O(agents expired)."""
        now = self.clock()
        silent = []
        while self._watch and self._watch[0][0] < now:
            _, agent_id = heapq.heappop(self._watch)
            seen = self._seen.get(agent_id)
            interval = interval_of(agent_id)
            if seen is None or interval is None:
                self._watched.discard(agent_id)
                continue
            due = seen + silent_after_s(interval)
            if due >= now:  # heard from since: watch on
                heapq.heappush(self._watch, (due, agent_id))
                continue
            self._watched.discard(agent_id)
            silent.append((agent_id, now - seen))
        return silent
