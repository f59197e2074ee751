"""Which coordinator the agent talks to when ``agent.coordinator_url`` lists several.

The agent uses the first URL that answers and stays with it while it answers (no flapping
back and forth); when a registration, heartbeat or progress report cannot reach it, the next
URL in the list (wrapping around) becomes the current one. Coordinators sharing one database
know the agent by the same id, so the agent carries on there: heartbeats, downloads and their
progress reports, unchanged.
"""

from __future__ import annotations

import logging

log = logging.getLogger("fleetd.agent.link")


class Coordinators:
    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("at least one coordinator URL is needed")
        self.urls = urls
        self._i = 0

    @property
    def current(self) -> str:
        return self.urls[self._i]

    def __len__(self) -> int:
        return len(self.urls)

    def failed(self, url: str, reason: str) -> bool:
        """``url`` did not answer; True when that moved the agent on to another coordinator.

        Callers that failed on a URL which is no longer current (another part of the agent
        already moved on) change nothing."""
        if len(self.urls) == 1 or url != self.current:
            return False
        self._i = (self._i + 1) % len(self.urls)
        log.warning("coordinator %s unreachable (%s); moving to %s", url, reason, self.current)
        return True
