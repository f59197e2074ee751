"""The balancer contract (entry-point group ``fleetd.balancer``): which ready agent serves next.

A balancer instance is one *pool* of candidates that it keeps itself. The coordinator keeps
one pool for the supported models (every ready agent) and one per other model, and updates
them incrementally from registry events and request starts/ends, so that ``pick`` never
scans the fleet: implementations must make every method O(1) or O(log N).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Load(NamedTuple):
    """What a balancer may weigh about one candidate.

    ``in_flight`` is counted by the coordinator (requests it sent and that have not ended);
    the rest comes from the agent's last heartbeat.
    """

    in_flight: int = 0
    reported_in_flight: int = 0
    utilization: float = 0.0
    memory_free_bytes: int = 0


class Balancer(Protocol):
    """One pool of candidate agents, constructed with no arguments."""

    def __len__(self) -> int: ...

    def update(self, agent_id: str, load: Load) -> None:
        """Add ``agent_id`` as a candidate, or refresh its figures (after a heartbeat)."""

    def discard(self, agent_id: str) -> None:
        """Remove ``agent_id`` (offline, initializing, suspect); unknown ids are ignored."""

    def started(self, agent_id: str) -> None:
        """A request was sent to ``agent_id``; unknown ids are ignored."""

    def finished(self, agent_id: str) -> None:
        """A request to ``agent_id`` ended; unknown ids are ignored."""

    def pick(self) -> str | None:
        """The candidate to send the next request to, or None when the pool is empty."""
