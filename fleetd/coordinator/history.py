"""The fleet's recent past, in memory, for the dashboard's charts.

Every ``coordinator.history_interval_s`` (10 s by default) one sample: what was counted
since the previous one (requests, errors and tokens, told by the usage accounting as each
reply ends) and figures read at that moment (GPU memory and utilization from the agents'
last heartbeats, the summed speed of the downloads under way). ``SAMPLES`` are kept, so
the charts span an hour at the default interval, and a page opened late still shows it.

Samples sit in rings indexed by bucket number (``t // interval``): a slot is found
without a search, and a sample that was missed (the loop stalled) is a gap, never a shift.

Memory is fixed by the fleet's size: the fleet's series take ``len(FLEET) × SAMPLES × 8``
bytes (26 KB); each agent's ``len(AGENT) × SAMPLES × 4`` (8.6 KB, float32 is exact for the
counts of one interval and close enough for bytes on a chart), for at most
``history_max_agents`` agents (1,000 by default: 8.6 MB). Agents beyond that have no
per-agent history until a slot frees (an agent removed, or offline for a whole window).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any

import msgspec
from aiohttp import web

from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.registry import REGISTRY
from fleetd.coordinator.settings import SETTINGS
from fleetd.coordinator.usage import ACCOUNTS
from fleetd.core.background import background
from fleetd.core.events import EVENTS
from fleetd.core.wire import Agent, Task

log = logging.getLogger("fleetd.history")

SAMPLES = 360

FLEET = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "gpu_memory_used_bytes",
    "gpu_memory_bytes",
    "gpu_utilization",
    "download_bps",
)
"""Counts per interval (requests … completion_tokens), then figures at the sample's time."""
AGENT = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "gpu_memory_used_bytes",
    "gpu_utilization",
    "download_bps",
)
FRACTIONS = frozenset({"gpu_utilization"})
"""Series of fractions (0.0-1.0), given with 3 decimals; every other one is whole numbers."""

_NAN = math.nan


def _ring(typecode: str) -> array[float]:
    return array(typecode, [_NAN]) * SAMPLES


def _gpu(agents: Iterable[Agent]) -> tuple[float, float, float]:
    """(memory used, memory of the GPUs that report it, mean utilization) over the GPUs
    that report each figure; NaN where none does."""
    used = total = util = 0.0
    reported = utils = 0
    for a in agents:
        for g in a.gpus:
            if g.memory_used_bytes is not None:
                used += g.memory_used_bytes
                total += g.memory_bytes
                reported += 1
            if g.utilization is not None:
                util += g.utilization
                utils += 1
    if not reported:
        used = total = _NAN
    return used, total, (util / utils if utils else _NAN)


class HistorySample(msgspec.Struct):
    """The ``history`` event: the fleet's values for the interval starting at ``t``."""

    t: int
    interval_s: int
    fleet: dict[str, float | None]


class History:
    """Counts since the last sample, and the rings of the last ``SAMPLES`` samples."""

    def __init__(
        self, interval_s: int, max_agents: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.interval = interval_s
        self.max_agents = max_agents
        self.clock = clock
        self.last = -1
        """The newest bucket sampled (-1: none yet)."""
        self._buckets = array("q", [-1]) * SAMPLES
        """The bucket each slot holds; a slot of another bucket is a gap."""
        self._fleet = {name: _ring("d") for name in FLEET}
        self._agents: dict[str, dict[str, array[float]]] = {}
        self._seen: dict[str, int] = {}
        """Agent id -> the last bucket with a value for it (its ring is dropped a window on)."""
        self._counts = [0, 0, 0, 0]
        """Since the last sample: requests, errors, prompt tokens, completion tokens."""
        self._agent_counts: dict[str, list[int]] = {}
        self._speeds: dict[str, tuple[str, float]] = {}
        """Task id -> (agent id, bytes/s) of the downloads under way."""

    # -- hooks (per reply, per task change: a few dictionary updates) -------------------

    def request_ended(self, agent_id: str, prompt: int, completion: int, failed: bool) -> None:
        """An inference request's reply ended (``agent_id`` empty: no agent answered it)."""
        c = self._counts
        c[0] += 1
        c[1] += failed
        c[2] += prompt
        c[3] += completion
        if agent_id:
            a = self._agent_counts.get(agent_id)
            if a is None:
                a = self._agent_counts[agent_id] = [0, 0, 0]
            a[0] += 1
            a[1] += prompt
            a[2] += completion

    def task_changed(self, t: Task) -> None:
        if t.status == "downloading":
            self._speeds[t.id] = (t.agent_id, t.speed_bps)
        else:
            self._speeds.pop(t.id, None)

    # -- sampling --------------------------------------------------------------------------

    def until_next(self) -> float:
        """Seconds to the end of the current interval."""
        return self.interval - self.clock() % self.interval

    def sample(self, agents: Collection[Agent]) -> HistorySample | None:
        """Write the interval that just ended (what was counted since the last sample goes
        to it); None when that interval was sampled already (the clock went back)."""
        bucket = round(self.clock() / self.interval) - 1
        if bucket <= self.last:
            return None
        self.last = bucket
        slot = bucket % SAMPLES
        self._buckets[slot] = bucket
        counts, self._counts = self._counts, [0, 0, 0, 0]
        agent_counts, self._agent_counts = self._agent_counts, {}
        downloads: dict[str, float] = {}
        for agent_id, bps in self._speeds.values():
            downloads[agent_id] = downloads.get(agent_id, 0.0) + bps
        present = {a.id for a in agents}
        for gone in [i for i in self._agents if i not in present]:
            del self._agents[gone]  # removed: its slot is free at once
            del self._seen[gone]
        online = []
        for a in agents:
            if a.status == "online":
                online.append(a)
            self._sample_agent(a, slot, bucket, agent_counts.get(a.id), downloads.get(a.id))
        used, total, util = _gpu(online)
        values = (*counts, used, total, util, sum(downloads.values()))
        for name, v in zip(FLEET, values, strict=True):
            self._fleet[name][slot] = v
        fleet = {name: _out(name, v) for name, v in zip(FLEET, values, strict=True)}
        return HistorySample(bucket * self.interval, self.interval, fleet)

    def _sample_agent(
        self, a: Agent, slot: int, bucket: int, counts: list[int] | None, download: float | None
    ) -> None:
        rings = self._agents.get(a.id)
        if rings is None:
            if a.status != "online" or len(self._agents) >= self.max_agents:
                return
            rings = self._agents[a.id] = {name: _ring("f") for name in AGENT}
        if a.status == "online":
            used, _, util = _gpu((a,))
            req, prompt, completion = counts or (0, 0, 0)
            values: tuple[float, ...] = (req, prompt, completion, used, util, download or 0.0)
        elif counts:  # replies that ended after the agent went offline still count
            values = (*counts, _NAN, _NAN, _NAN)
        else:
            values = (_NAN,) * len(AGENT)
            if self._seen.get(a.id, bucket) <= bucket - SAMPLES:
                del self._agents[a.id]  # offline for a whole window: nothing left to show
                del self._seen[a.id]
                return
        if a.status == "online" or counts:
            self._seen[a.id] = bucket
        for name, v in zip(AGENT, values, strict=True):
            rings[name][slot] = v

    # -- reading ---------------------------------------------------------------------------

    def tracked(self, agent_id: str) -> bool:
        """Whether ``agent_id`` has (or, from its next sample on, will have) a history."""
        return agent_id in self._agents or len(self._agents) < self.max_agents

    def read(self, agent_id: str | None = None, since: float | None = None) -> dict[str, Any]:
        """The fleet's (or an agent's) series from the bucket after ``since`` (unix seconds)
        or the window's start: ``start`` is the first point's time, one point per
        ``interval_s``, null where there is no sample."""
        end = self.last
        first = end - SAMPLES + 1
        if since is not None:
            first = max(first, math.floor(since / self.interval) + 1)
        rings: dict[str, array[float]] | None
        names: tuple[str, ...]
        if agent_id is None:
            rings, names = self._fleet, FLEET
        else:
            rings, names = self._agents.get(agent_id), AGENT
        buckets = range(first, end + 1) if end >= 0 else range(0)
        series: dict[str, list[float | None]] = {}
        for name in names:
            ring = rings[name] if rings is not None else None
            out: list[float | None] = []
            for b in buckets:
                slot = b % SAMPLES
                if ring is None or self._buckets[slot] != b:
                    out.append(None)
                else:
                    out.append(_out(name, ring[slot]))
            series[name] = out
        start = (first if end >= 0 else round(self.clock() / self.interval)) * self.interval
        return {
            "interval_s": self.interval,
            "window_s": self.interval * SAMPLES,
            "start": start,
            "series": series,
        }


def _out(name: str, v: float) -> float | None:
    if math.isnan(v):
        return None
    return round(v, 3) if name in FRACTIONS else round(v)


HISTORY = web.AppKey("history", History)


async def _run(history: History, app: web.Application) -> None:
    registry = app[REGISTRY]
    events = app[EVENTS]
    while True:
        await asyncio.sleep(history.until_next())
        try:
            sample = history.sample(registry.agents.values())
        except Exception:
            log.exception("history sample failed")
            continue
        if sample is not None:
            events.publish("history", sample)


async def history_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx entry after the usage accounting's and the distribution's."""
    c = app[SETTINGS]
    history = app[HISTORY] = History(c.history_interval_s, c.history_max_agents)
    app[ACCOUNTS].on_end.append(history.request_ended)
    app[DISTRIBUTION].on_task.append(history.task_changed)
    async with background(_run(history, app), "fleetd-history"):
        yield
