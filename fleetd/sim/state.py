"""What the simulated server holds besides VRAM: blobs on its disk, installed models,
downloads in flight, the knobs tests turn at run time, and the counters they read back.

Blobs are content-addressed as in Ollama: a copy shares its source's blobs, partial
downloads are just blobs with fewer bytes than their size, and disk use is their sum.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from fleetd.sim import gotime, names
from fleetd.sim.catalog import ModelSpec, build_catalog
from fleetd.sim.options import Fault, SimOptions

log = logging.getLogger(__name__)

BLOBS_DIR = "/usr/share/ollama/.ollama/models/blobs"
STATE_FILE = "sim-ollama-state.json"


class Knobs(msgspec.Struct):
    """Behaviour that tests may change while the server runs (``/_sim/settings``)."""

    bandwidth_bps: float
    disk_bytes: int
    vram_bytes: int
    max_loaded_models: int
    latency_ms: float
    token_delay_ms: float
    load_ms: float
    down: bool = False
    faults: list[Fault] = msgspec.field(default_factory=list)

    def fault_for(self, model: str) -> Fault | None:
        return next((f for f in self.faults if f.model == model), None)

    def spend(self, fault: Fault) -> None:
        """The fault fired once; disarm it when it has no pulls left to hit."""
        i = self.faults.index(fault)
        if fault.times == 1:
            del self.faults[i]
        elif fault.times > 1:
            self.faults[i] = msgspec.structs.replace(fault, times=fault.times - 1)


@dataclass
class Stats:
    """Counters per model, so tests can prove what really happened on this server."""

    pulls: Counter[str] = field(default_factory=Counter)
    downloads: Counter[str] = field(default_factory=Counter)
    bytes_downloaded: Counter[str] = field(default_factory=Counter)
    loads: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)


class Installed(msgspec.Struct):
    spec: ModelSpec
    modified_ns: int


class _Saved(msgspec.Struct):
    installed: dict[str, Installed]
    blobs: dict[str, int]


class DiskFull(Exception):
    """A blob write found no room left on the simulated disk."""

    def __init__(self, digest: str) -> None:
        blob = f"{BLOBS_DIR}/{digest.replace(':', '-')}-partial"
        super().__init__(f"write {blob}: no space left on device")


class Store:
    """The models directory: blobs (digest -> bytes present) and manifests (installed)."""

    def __init__(self, options: SimOptions, knobs: Knobs) -> None:
        self.catalog = build_catalog(options.models, options.size_scale)
        self.blobs: dict[str, int] = {}
        self.installed: dict[str, Installed] = {}
        self.dirty = False
        self._knobs = knobs
        self._path = Path(options.state_dir) / STATE_FILE if options.state_dir else None

    def resolve(self, name: str) -> str:
        """Display name of ``name``, matched case-insensitively to an installed one as
        Ollama does (getExistingName); raises names.InvalidName."""
        short = names.display(name)
        return next((n for n in self.installed if n.lower() == short.lower()), short)

    @property
    def used(self) -> int:
        return sum(self.blobs.values())

    def have(self, spec: ModelSpec) -> int:
        return sum(self.blobs.get(b.digest, 0) for b in spec.blobs)

    def write(self, digest: str, n: int) -> int:
        """Append up to ``n`` bytes to a blob; returns how many fitted on the disk."""
        n = min(n, max(self._knobs.disk_bytes - self.used, 0))
        self.blobs[digest] = self.blobs.get(digest, 0) + n
        self.dirty = True
        return n

    def install(self, name: str, spec: ModelSpec) -> None:
        for blob in spec.blobs:
            self.blobs[blob.digest] = blob.size
        self.installed[name] = Installed(spec, gotime.now_ns())
        self.dirty = True

    def delete(self, name: str) -> bool:
        gone = self.installed.pop(name, None)
        if gone is None:
            return False
        kept = {b.digest for m in self.installed.values() for b in m.spec.blobs}
        for blob in gone.spec.blobs:
            if blob.digest not in kept:
                self.blobs.pop(blob.digest, None)
        self.dirty = True
        return True

    def partials(self) -> dict[str, int]:
        """Bytes already on disk for registry models not (yet) installed."""
        return {
            name: have
            for name, spec in self.catalog.items()
            if name not in self.installed and (have := self.have(spec)) > 0
        }

    async def load(self, preinstalled: list[str]) -> None:
        if self._path is not None and await asyncio.to_thread(self._path.exists):
            data = await asyncio.to_thread(self._path.read_bytes)
            try:
                saved = msgspec.json.decode(data, type=_Saved)
            except msgspec.DecodeError as exc:
                log.warning("sim-ollama: ignoring unreadable %s (%s)", self._path, exc)
            else:
                self.installed, self.blobs = saved.installed, saved.blobs
                log.info("sim-ollama: %d models restored from %s", len(self.installed), self._path)
        for raw in preinstalled:
            name = names.display(raw)
            if name not in self.installed:
                self.install(name, self.catalog[name])

    async def save(self) -> None:
        if self._path is None or not self.dirty:
            return
        self.dirty = False
        data = msgspec.json.encode(_Saved(self.installed, self.blobs))
        await asyncio.to_thread(_write_atomic, self._path, data)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Download:
    """One model's download, shared by every pull stream that asks for it."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        self.name, self.spec = name, spec
        self.clients = 0
        self.error: str | None = None
        self.interrupted = False
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()

    async def next_tick(self) -> None:
        """Wait for the next progress step (or the end) of this download."""
        await self._tick.wait()

    def publish(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()


D = TypeVar("D", bound=Download)


class Downloads(Generic[D]):
    """The downloads one sim runs, by name: a client joins the running one or starts it, and
    the last client leaving cancels it (partials stay), as Ollama's pull does."""

    def __init__(self) -> None:
        self.active: dict[str, D] = {}

    def _join(self, name: str, make: Callable[[], D]) -> D:
        dl = self.active.get(name)
        if dl is None:
            dl = self.active[name] = make()
            dl.task = asyncio.create_task(self._run(dl), name=f"sim-pull {name}")
        dl.clients += 1
        return dl

    def detach(self, dl: Download) -> None:
        """A stream let go; the last one leaving cancels the download (partials stay)."""
        dl.clients -= 1
        if dl.clients == 0 and not dl.finished and dl.task is not None:
            log.info("sim-ollama: last client of %s left, download cancelled", dl.name)
            dl.task.cancel()

    async def stop(self) -> None:
        """Cancel every download, as a dying server would."""
        tasks = [dl.task for dl in self.active.values() if dl.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, dl: D) -> None:
        raise NotImplementedError


class Puller(Downloads[Download]):
    """Runs downloads: paced by bandwidth, bounded by disk, broken by armed faults."""

    def __init__(self, store: Store, knobs: Knobs, stats: Stats, interval_s: float) -> None:
        super().__init__()
        self._store, self._knobs, self._stats = store, knobs, stats
        self._interval = interval_s

    def attach(self, name: str, spec: ModelSpec) -> Download:
        """Join the running download of ``name`` or start one."""
        return self._join(name, lambda: Download(name, spec))

    async def _run(self, dl: Download) -> None:
        store, spec = self._store, dl.spec
        if store.have(spec) < spec.size:
            self._stats.downloads[dl.name] += 1
        loop = asyncio.get_running_loop()
        last, carry = loop.time(), 0.0
        try:
            while True:
                fault = self._knobs.fault_for(dl.name)
                done = store.have(spec)
                if fault is not None and done >= fault.at * spec.size:
                    self._knobs.spend(fault)
                    if fault.kind == "stall":
                        await self._stall(dl)
                    if fault.kind == "interrupt":
                        dl.interrupted = True
                    else:
                        dl.error = fault.message
                    return
                if done >= spec.size:
                    break
                if self._knobs.bandwidth_bps <= 0:
                    budget = spec.size
                else:
                    await asyncio.sleep(self._interval)
                    now = loop.time()
                    carry += self._knobs.bandwidth_bps * (now - last)
                    last, budget = now, int(carry)
                    carry -= budget
                if fault is not None:
                    budget = min(budget, math.ceil(fault.at * spec.size) - done)
                self._spread(dl, budget)
                dl.publish()
            store.install(dl.name, spec)
        except DiskFull as exc:
            dl.error = str(exc)
        except asyncio.CancelledError:
            dl.interrupted = True
            raise
        finally:
            dl.finished = True
            self.active.pop(dl.name, None)
            dl.publish()
            outcome = dl.error or ("interrupted" if dl.interrupted else "done")
            log.info("sim-ollama: pull %s ended: %s", dl.name, outcome)

    async def _stall(self, dl: Download) -> None:
        """No byte ever again, the progress lines still coming: ends when the last client
        leaves (``detach`` cancels the download)."""
        while True:
            await asyncio.sleep(self._interval)
            dl.publish()

    def _spread(self, dl: Download, budget: int) -> None:
        """Share ``budget`` bytes among the unfinished blobs: layers download at once."""
        blobs = self._store.blobs
        pending = [b for b in dl.spec.blobs if blobs.get(b.digest, 0) < b.size]
        while budget > 0 and pending:
            share = max(budget // len(pending), 1)
            for blob in list(pending):
                n = min(share, blob.size - blobs.get(blob.digest, 0), budget)
                written = self._store.write(blob.digest, n)
                self._stats.bytes_downloaded[dl.name] += written
                if written < n:
                    raise DiskFull(blob.digest)
                budget -= n
                if blobs[blob.digest] >= blob.size:
                    pending.remove(blob)
                if budget == 0:
                    break
