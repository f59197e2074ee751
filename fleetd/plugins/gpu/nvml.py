"""NVIDIA GPUs through NVML (nvidia-ml-py). No library or driver means no GPU, never a crash."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from fleetd.config import AgentConfig
from fleetd.core.gpu import Gpu

log = logging.getLogger("fleetd.gpu.nvml")

_init_lock = threading.Lock()
_initialized = False


def _ensure_init(pynvml: Any) -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            pynvml.nvmlInit()
            _initialized = True


def _read() -> list[Gpu]:
    """Blocking NVML calls; run in a thread."""
    try:
        import pynvml
    except ImportError:
        log.info("no GPU from nvml: nvidia-ml-py is not installed")
        return []
    try:
        _ensure_init(pynvml)
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            except pynvml.NVMLError:
                util = None
            gpus.append(
                Gpu(
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(mem.total),
                    memory_used_bytes=int(mem.used),
                    utilization=util,
                )
            )
        return gpus
    except pynvml.NVMLError as e:
        log.info("no GPU from nvml: %s", e)
        return []


class NvmlProbe:
    name = "nvml"

    def __init__(self, config: AgentConfig) -> None:
        pass

    async def probe(self) -> list[Gpu]:
        return await asyncio.to_thread(_read)
