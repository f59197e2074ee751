"""CPU of ``EventBus.publish`` per agent heartbeat, with one dashboard subscribed.

N agents with 8 GPUs each (as ``bench.hbload`` registers them) are published once, then one
subscriber opens (as a dashboard does on a running fleet) and the agents heartbeat
round-robin: each heartbeat changes the agent in place as the registry does (GPU figures,
CPU, memory, last seen, a new revision) and publishes it. ``publish`` is timed alone, in
batches of 10 between which the subscriber's reader takes what the bus gives it. The bus runs
on a simulated clock, ``--rate`` heartbeats a second (1,000: 5,000 agents every 5 s), and the
reader is woken after every batch, as its timer would be at that rate; so it gets the
messages a dashboard gets at that rate, however fast the code runs. Also reported: those
messages, and the process CPU of the whole run per heartbeat (the reader's encoding and the
simulated heartbeats' own changes included).

``--against FILE`` times another ``events.py`` too, in alternating rounds, e.g. the code
before a change: ``git show 871ebc5:fleetd/core/events.py > /tmp/events_before.py``.

    python -m bench.events_publish [--publishes 100000] [--agents 5000] [--rate 1000]
        [--rounds 3] [--against FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

import msgspec

from bench.hbload import GPU_MEMORY, GPU_NAME, MODELS, heartbeat_bodies
from fleetd.core import events
from fleetd.core.gpu import Gpu
from fleetd.core.wire import Agent, Heartbeat, next_revision, utcnow

BATCH = 10
FIGURES = 64
"""Distinct sets of heartbeat figures, drawn once: agent i's k-th heartbeat takes (i + k)."""


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("events_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fleet(n: int) -> list[Agent]:
    return [
        Agent(
            id=f"{i:032x}",
            name=f"sim-{i}",
            url=f"http://127.0.0.1:9/sim/{i}",
            initializing=False,
            ready_models=len(MODELS),
            total_models=len(MODELS),
            gpus=[Gpu(name=GPU_NAME, memory_bytes=GPU_MEMORY) for _ in range(8)],
            instance_id=f"{i:032x}",
            version="bench",
            ollama_versions=["0.12.6"],
            loaded_models=MODELS[:1],
            revision=next_revision(),
        )
        for i in range(n)
    ]


def figures() -> list[tuple[list[Gpu], float | None, float | None, int]]:
    """The heartbeat figures ``bench.hbload`` sends, as the registry takes them."""
    beats = [msgspec.json.decode(b, type=Heartbeat) for b in heartbeat_bodies(8, FIGURES)]
    return [
        (hb.gpus or [], hb.cpu_percent, hb.memory_percent, hb.requests_in_flight) for hb in beats
    ]


async def run(
    module: ModuleType, publishes: int, n: int, rate: float
) -> tuple[float, float, int, int]:
    """µs per publish, process CPU µs per heartbeat, messages and bytes the reader got."""
    now = [0.0]
    bus = module.EventBus(clock=lambda: now[0])
    agents = fleet(n)
    for a in agents:
        bus.publish("agent", a)
    sub = bus.subscribe()
    got = [0, 0]

    async def reader() -> None:
        async for msg in sub:
            got[0] += 1
            got[1] += len(msg)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    figs = figures()
    spent = 0.0
    cpu = time.process_time()
    for start in range(0, publishes, BATCH):
        now[0] = start / rate
        batch = []
        for k in range(start, min(start + BATCH, publishes)):
            a = agents[k % n]
            a.gpus, a.cpu_percent, a.memory_percent, a.requests_in_flight = figs[
                (k % n + k // n) % FIGURES
            ]
            a.last_seen = utcnow()
            a.revision = next_revision()
            batch.append(a)
        t0 = time.perf_counter()
        for a in batch:
            bus.publish("agent", a)
        spent += time.perf_counter() - t0
        sub._sub.ready.set()  # its timer, due by the simulated clock
        await asyncio.sleep(0)
    cpu = time.process_time() - cpu
    bus.close_all()
    await task
    return spent / publishes * 1e6, cpu / publishes * 1e6, got[0], got[1]


async def main(publishes: int, n: int, rate: float, rounds: int, against: str | None) -> None:
    codes = {"this tree": events}
    if against:
        codes = {Path(against).name: load(against), **codes}
    results: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in codes}
    for _ in range(rounds):
        for name, module in codes.items():
            results[name].append(await run(module, publishes, n, rate))
    print(
        f"{publishes:,} heartbeats of {n:,} agents (8 GPUs) at {rate:g}/s simulated, "
        f"one subscriber; medians of {rounds}"
    )
    print("| events.py | µs per publish | CPU µs per heartbeat (all) | messages sent | KB sent |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        pub, cpu, msgs, size = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"| {name} | {pub:.2f} | {cpu:.2f} | {msgs:.0f} | {size / 1000:.0f} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--publishes", type=int, default=100_000)
    p.add_argument("--agents", type=int, default=5000)
    p.add_argument("--rate", type=float, default=1000.0, help="heartbeats a second")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", help="another events.py to time alongside")
    a = p.parse_args()
    asyncio.run(main(a.publishes, a.agents, a.rate, a.rounds, a.against))
