"""Whether a model's weights fit an agent's GPUs: the registry manifest's size (config plus
layers, what Ollama loads) plus the agent's margin (its ``disk_margin_bytes``, the room it
already keeps on disk) against the total memory of its GPUs.

A model that does not fit is not ordered there automatically and shows ``too_large`` in the
matrix; a manual order warns first (``exceeds_vram``). A size the registry cannot tell is
no reason to refuse: the model is ordered as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from fleetd.coordinator.settings import SETTINGS
from fleetd.core.catalog import CatalogError, manifest_size
from fleetd.core.http import CLIENT
from fleetd.core.wire import Agent

log = logging.getLogger("fleetd.vram")

RETRY_UNKNOWN_S = 60.0
"""A registry that could not tell a size is asked again after this long, not every sync."""


def human(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


class ModelSizes:
    """Manifest sizes from ``registry_url``, looked up once per model and kept."""

    def __init__(self, session: aiohttp.ClientSession, registry_url: str) -> None:
        self.session = session
        self.registry_url = registry_url
        self.sizes: dict[str, int] = {}
        self._failed_at: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Future[int | None]] = {}
        self.on_learned: list[Callable[[], None]] = []
        """Called when a size is learned or changes: what fits where may have changed."""

    def known(self, model: str) -> int | None:
        return self.sizes.get(model)

    def note(self, model: str, size: int) -> None:
        if self.sizes.get(model) != size:
            self.sizes[model] = size
            for fn in self.on_learned:
                fn()

    def settled(self, model: str) -> bool:
        """Whether ``lookup`` would answer at once (size known, or asked too recently)."""
        failed = self._failed_at.get(model)
        return model in self.sizes or (
            failed is not None and time.monotonic() - failed < RETRY_UNKNOWN_S
        )

    async def lookup(self, model: str) -> int | None:
        """The size, or None when the registry cannot say now (one look-up per model at a
        time, shared by every caller)."""
        if self.settled(model):
            return self.sizes.get(model)
        pending = self._lookups.get(model)
        if pending is None:
            pending = self._lookups[model] = asyncio.ensure_future(self._fetch(model))
            pending.add_done_callback(lambda _: self._lookups.pop(model, None))
        return await asyncio.shield(pending)

    async def _fetch(self, model: str) -> int | None:
        try:
            size = await manifest_size(self.session, self.registry_url, model)
        except CatalogError as e:  # CatalogNotFound included: the download will say so
            log.info("size of %s unknown, not checked against GPU memory: %s", model, e)
            self._failed_at[model] = time.monotonic()
            return None
        self.note(model, size)
        return size


def gpu_memory(agent: Agent) -> int:
    return sum(g.memory_bytes for g in agent.gpus)


def exceeds(agent: Agent, model: str, size: int | None) -> str | None:
    """Why ``model`` (``size`` bytes) cannot fit ``agent``'s GPUs, or None when it fits or
    either figure is unknown."""
    total = gpu_memory(agent)
    if size is None or total <= 0 or size + agent.margin_bytes <= total:
        return None
    return (
        f"{model} needs {human(size)} plus a {human(agent.margin_bytes)} margin; agent "
        f"{agent.name} has {human(total)} of GPU memory in all"
    )


async def known_soon(sizes: ModelSizes, models: list[str], timeout: float = 1.5) -> None:
    """Look up the sizes not known yet, waiting ``timeout`` at most (the rest stay unknown,
    their look-ups go on)."""
    unknown = [m for m in models if sizes.known(m) is None]
    if unknown:
        lookups = [asyncio.ensure_future(sizes.lookup(m)) for m in unknown]
        await asyncio.wait(lookups, timeout=timeout)


def too_large(sizes: ModelSizes) -> Callable[[Agent, str], str | None]:
    """``exceeds`` with the sizes known now, as planning takes it."""
    return lambda agent, model: exceeds(agent, model, sizes.known(model))


def fitting(agent: Agent, models: list[str], sizes: ModelSizes) -> list[str]:
    """``models`` less those known not to fit ``agent`` (no look-up: sizes known now)."""
    # Answered with every registration and heartbeat: the GPU total is summed once, not per
    # model.
    total = gpu_memory(agent)
    if total <= 0:
        return list(models)  # GPU memory unknown: nothing is refused
    room = total - agent.margin_bytes
    return [m for m in models if (size := sizes.known(m)) is None or size <= room]


async def fitting_now(agent: Agent, models: list[str], sizes: ModelSizes) -> list[str]:
    """``models`` less those that do not fit ``agent``, looking up sizes not known yet."""
    unsettled = [m for m in models if not sizes.settled(m)]
    if unsettled:  # else no task per model: a fleet registering at once syncs every agent
        await asyncio.gather(*(sizes.lookup(m) for m in unsettled))
    return fitting(agent, models, sizes)


MODEL_SIZES = web.AppKey("model_sizes", ModelSizes)


async def sizes_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the client's entry."""
    sizes = ModelSizes(app[CLIENT], app[SETTINGS].registry_url)
    app[MODEL_SIZES] = sizes
    yield
    for pending in list(sizes._lookups.values()):
        pending.cancel()
