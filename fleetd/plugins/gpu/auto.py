"""The first probe that finds a GPU: NVML, then the devices declared in config."""

from __future__ import annotations

import logging

from fleetd.config import AgentConfig
from fleetd.core.gpu import Gpu, GpuProbe
from fleetd.plugins.gpu.nvml import NvmlProbe
from fleetd.plugins.gpu.static import StaticProbe

log = logging.getLogger("fleetd.gpu.auto")


class AutoProbe:
    name = "auto"

    def __init__(self, config: AgentConfig) -> None:
        self._probes: list[GpuProbe] = [NvmlProbe(config), StaticProbe(config)]
        self._chosen: GpuProbe | None = None

    async def probe(self) -> list[Gpu]:
        if self._chosen is not None:
            return await self._chosen.probe()
        for p in self._probes:
            gpus = await p.probe()
            if gpus:
                log.info("gpu probe auto chose %s (%d GPU(s))", p.name, len(gpus))
                self._chosen = p
                return gpus
        return []
