"""A probe that finds nothing: for testing refusal, or hosts that must never take work."""

from __future__ import annotations

from fleetd.config import AgentConfig
from fleetd.core.gpu import Gpu


class NoProbe:
    name = "none"

    def __init__(self, config: AgentConfig) -> None:
        pass

    async def probe(self) -> list[Gpu]:
        return []
