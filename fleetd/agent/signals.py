"""The one way the agent's parts tell each other that something happened.

A part that has news owns a ``Notice`` and fires it; a part that acts on news owns a
``Wakeup`` and listens with it to the notices it cares about. A wake-up is level-triggered:
any number of fires while its owner is busy count as one, and none is lost. Nothing sets
another part's flags or appends to its lists.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """Owned by the part that waits."""

    def __init__(self, *, pending: bool = False) -> None:
        self._event = asyncio.Event()
        if pending:
            self._event.set()

    def set(self) -> None:
        self._event.set()

    def take(self) -> bool:
        """Whether it was set (and clear it): for a part that polls on its own schedule."""
        was = self._event.is_set()
        self._event.clear()
        return was

    async def wait(self, timeout: float | None = None) -> bool:
        """Until set or ``timeout`` seconds passed; cleared on return. True when set."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True


class Notice:
    """Owned by the part that has the news; fans out to every listener's wake-up."""

    def __init__(self) -> None:
        self._listeners: list[Wakeup] = []

    def listen(self, wakeup: Wakeup) -> Wakeup:
        self._listeners.append(wakeup)
        return wakeup

    def fire(self) -> None:
        for w in self._listeners:
            w.set()
