"""VRAM residency as Ollama's scheduler (server/sched.go) manages it: loading on demand,
keep_alive timers, silent eviction under VRAM or model-count pressure, one request at a
time per model (OLLAMA_NUM_PARALLEL=1) and a bounded wait queue (OLLAMA_MAX_QUEUE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fleetd.sim import gotime
from fleetd.sim.catalog import ModelSpec
from fleetd.sim.state import Knobs, Stats

log = logging.getLogger(__name__)

BUSY = "server busy, please try again.  maximum pending requests exceeded"


class SimError(Exception):
    """A failure Ollama reports with an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def human_bytes(n: int) -> str:
    """Sizes as Ollama's format.HumanBytes2 writes them in memory errors."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class Runner:
    """A model resident in (simulated) VRAM."""

    def __init__(self, name: str, spec: ModelSpec, keep_alive_s: float, num_ctx: int) -> None:
        self.name, self.spec, self.num_ctx = name, spec, num_ctx
        self.keep_alive_s = keep_alive_s
        self.expires_ns: int | None = None  # set when it goes idle, as Ollama does
        self.refs = 0
        self.last_used = 0.0
        self.idle = asyncio.Event()
        self.slot = asyncio.Semaphore(1)
        self.timer: asyncio.TimerHandle | None = None

    def hold(self, keep_alive_s: float | None) -> None:
        """A request starts using it; only a request's own keep_alive changes residency."""
        self.refs += 1
        self.idle.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if keep_alive_s is not None:
            self.keep_alive_s = keep_alive_s

    def expires_at_ns(self) -> int:
        return (
            self.expires_ns if self.expires_ns is not None else gotime.after_ns(self.keep_alive_s)
        )


class Scheduler:
    """Which models are loaded, and who waits for what."""

    def __init__(self, knobs: Knobs, stats: Stats, max_queue: int) -> None:
        self.loaded: dict[str, Runner] = {}
        self.waiting = 0
        self._knobs, self._stats, self._max_queue = knobs, stats, max_queue
        self._loading = asyncio.Lock()  # Ollama loads one model at a time

    @property
    def vram_used(self) -> int:
        return sum(r.spec.size for r in self.loaded.values())

    @contextlib.asynccontextmanager
    async def use(
        self,
        name: str,
        spec: ModelSpec,
        keep_alive_s: float | None,
        *,
        num_ctx: int | None = None,
        exclusive: bool = True,
    ) -> AsyncIterator[int]:
        """Hold ``name`` loaded for one request; yields the load time in ns.

        ``exclusive`` requests (generation) also wait for the model's single slot.
        """
        if self.waiting >= self._max_queue:
            raise SimError(503, BUSY)
        self.waiting += 1
        queued = True
        try:
            runner, load_ns = await self._acquire(name, spec, keep_alive_s, num_ctx)
            try:
                async with runner.slot if exclusive else contextlib.nullcontext():
                    self.waiting -= 1
                    queued = False
                    yield load_ns
            finally:
                self._release(runner)
        finally:
            if queued:
                self.waiting -= 1

    def expire(self, name: str) -> None:
        """keep_alive 0 without a prompt: unload now, or as soon as the model is idle."""
        runner = self.loaded.get(name)
        if runner is None:
            return
        runner.keep_alive_s = 0.0
        runner.expires_ns = gotime.now_ns()
        if runner.refs == 0:
            self.unload(name, "unload requested")

    def unload(self, name: str, why: str) -> bool:
        runner = self.loaded.pop(name, None)
        if runner is None:
            return False
        if runner.timer is not None:
            runner.timer.cancel()
        log.info("sim-ollama: %s unloaded (%s)", name, why)
        return True

    async def _acquire(
        self, name: str, spec: ModelSpec, keep_alive_s: float | None, num_ctx: int | None
    ) -> tuple[Runner, int]:
        runner = self.loaded.get(name)
        if runner is None:
            async with self._loading:
                runner = self.loaded.get(name)
                if runner is None:
                    return await self._load(name, spec, keep_alive_s, num_ctx)
        runner.hold(keep_alive_s)
        return runner, 0

    async def _load(
        self, name: str, spec: ModelSpec, keep_alive_s: float | None, num_ctx: int | None
    ) -> tuple[Runner, int]:
        start = gotime.now_ns()
        vram = self._knobs.vram_bytes
        if spec.size > vram:
            raise SimError(
                500,
                f"model requires more system memory ({human_bytes(spec.size)}) "
                f"than is available ({human_bytes(vram)})",
            )
        while self.loaded and (
            len(self.loaded) >= self._knobs.max_loaded_models
            or self.vram_used + spec.size > self._knobs.vram_bytes
        ):
            victim = self._victim()
            if victim.refs > 0:
                await victim.idle.wait()
            if self.loaded.get(victim.name) is victim:
                self.unload(victim.name, f"evicted to make room for {name}")
        await asyncio.sleep(self._knobs.load_ms / 1000)
        ctx = num_ctx or 4096
        if spec.family == "gptoss":  # Ollama raises gpt-oss's context to at least 8192
            ctx = max(ctx, 8192)
        runner = Runner(name, spec, gotime.DEFAULT_KEEP_ALIVE_S, ctx)
        runner.hold(keep_alive_s)
        self.loaded[name] = runner
        self._stats.loads[name] += 1
        log.info("sim-ollama: %s loaded", name)
        return runner, gotime.now_ns() - start

    def _victim(self) -> Runner:
        """Ollama's pick (findRunnerToUnload): an idle runner first, shortest keep_alive
        first (forever last); ties go to the least recently used."""
        ranked = sorted(self.loaded.values(), key=lambda r: (r.keep_alive_s, r.last_used))
        return next((r for r in ranked if r.refs == 0), ranked[0])

    def _release(self, runner: Runner) -> None:
        runner.refs -= 1
        runner.last_used = asyncio.get_running_loop().time()
        if runner.refs > 0:
            return
        runner.idle.set()
        if self.loaded.get(runner.name) is not runner:
            return
        if runner.keep_alive_s <= 0:
            self.unload(runner.name, "keep_alive 0")
            return
        runner.expires_ns = gotime.after_ns(runner.keep_alive_s)
        if runner.keep_alive_s < gotime.FOREVER_S:
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(runner.keep_alive_s, self._expired, runner)

    def _expired(self, runner: Runner) -> None:
        if self.loaded.get(runner.name) is runner and runner.refs == 0:
            self.unload(runner.name, "keep_alive expired")
