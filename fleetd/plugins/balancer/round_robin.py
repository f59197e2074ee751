"""``round-robin``: candidates in turn, whatever their load."""

from __future__ import annotations

from fleetd.core.balancing import Load


class RoundRobin:
    """A list with an index per id: O(1) pick, add and removal (the last candidate takes the
    removed one's place, which shifts the turn order slightly but skips nobody for long)."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._ids)

    def update(self, agent_id: str, load: Load) -> None:
        if agent_id not in self._pos:
            self._pos[agent_id] = len(self._ids)
            self._ids.append(agent_id)

    def discard(self, agent_id: str) -> None:
        i = self._pos.pop(agent_id, None)
        if i is None:
            return
        last = self._ids.pop()
        if i < len(self._ids):
            self._ids[i] = last
            self._pos[last] = i

    def started(self, agent_id: str) -> None:
        """Load plays no part in the turn order."""

    def finished(self, agent_id: str) -> None:
        """Load plays no part in the turn order."""

    def pick(self) -> str | None:
        if not self._ids:
            return None
        i = self._next % len(self._ids)
        self._next = i + 1
        return self._ids[i]
