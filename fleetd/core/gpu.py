"""The GPU probe contract (entry-point group ``fleetd.gpu``) and the figures it reports."""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec

from fleetd.config import AgentConfig


class Gpu(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: Annotated[str, msgspec.Meta(max_length=256)]
    memory_bytes: Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]
    memory_used_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    utilization: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    """0.0–1.0, the share of the GPU busy; a percentage (0–100) is refused, not stored,
    so the balancer never compares the two scales."""


class GpuProbe(Protocol):
    """Constructed as ``Probe(config)``; ``probe()`` returns the GPUs now (empty = no GPU).

    Blocking driver calls must run in a thread; a missing driver means "no GPU", not an error.
    """

    name: str

    def __init__(self, config: AgentConfig) -> None: ...

    async def probe(self) -> list[Gpu]: ...
