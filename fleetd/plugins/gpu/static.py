"""GPUs declared in ``[[agent.gpu.devices]]``: for simulated fleets and hosts NVML cannot see."""

from __future__ import annotations

from fleetd.config import AgentConfig
from fleetd.core.gpu import Gpu


class StaticProbe:
    name = "static"

    def __init__(self, config: AgentConfig) -> None:
        self._gpus = [Gpu(name=d.name, memory_bytes=d.memory_bytes) for d in config.gpu.devices]

    async def probe(self) -> list[Gpu]:
        return list(self._gpus)
