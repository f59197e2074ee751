"""Fairness in the gate: a light key's wait while a heavy key floods a saturated fleet.

One agent over one ``fleetd sim-ollama`` (one model, one request at a time, as Ollama with
OLLAMA_NUM_PARALLEL=1; each reply takes ``--service-ms``), a coordinator with
``max_requests_per_agent = 1``, so every request beyond the one in flight waits in the gate.
Two managed keys send open-loop Poisson arrivals: ``light`` at 15 % of the fleet's capacity,
``heavy`` at 10x that (150 %: the fleet is saturated and heavy's backlog grows). Phases, in
interleaved rounds, each ``--seconds`` long:

- ``alone``: light only (its baseline);
- ``fair``: light and heavy, each with its own key (served round-robin across keys);
- ``one-key``: the same traffic under one key: arrival order, as before the fair gate.

A request's wait is its time to the full reply minus the service time measured alone, i.e.
the time spent behind other requests (gate and agent); reported as the p50 of the light key's
requests per phase (median over rounds), and the ratio fair / alone (goal: <= 2).

    python -m bench.fairness [--rounds 3] [--seconds 8] [--service-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

from bench.procs import Proc, spawn
from bench.proxy import ADMIN_TOKEN as ADMIN
from bench.proxy import ENV, MODEL, start_fleet
from fleetd.core.server import run

BODY = msgspec.json.encode(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
)
CHUNKS = 10


async def new_key(s: aiohttp.ClientSession, coordinator: str, name: str) -> str:
    async with s.post(
        coordinator + "/api/keys",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as r:
        r.raise_for_status()
        key: str = (await r.json())["key"]
        return key


async def one(s: aiohttp.ClientSession, url: str, key: str) -> float | None:
    started = time.perf_counter()
    async with s.post(url, data=BODY, headers={"Authorization": f"Bearer {key}"}) as r:
        await r.read()
        if r.status != 200:
            return None  # heavy's backlog times out in the gate (503): expected
    return time.perf_counter() - started


async def arrivals(
    s: aiohttp.ClientSession, url: str, key: str, rate: float, until: float, out: list[float]
) -> None:
    """Poisson arrivals at ``rate``/s until ``until``; each latency appended to ``out``."""
    rng = random.Random(hash(key))
    tasks: list[asyncio.Task[None]] = []

    async def fire() -> None:
        latency = await one(s, url, key)
        if latency is not None:
            out.append(latency)

    while time.perf_counter() < until:
        tasks.append(asyncio.create_task(fire()))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)


async def phase(
    s: aiohttp.ClientSession, url: str, light: str, heavy: str | None, rate: float, seconds: float
) -> list[float]:
    light_lat: list[float] = []
    until = time.perf_counter() + seconds
    jobs = [arrivals(s, url, light, rate, until, light_lat)]
    if heavy is not None:
        jobs.append(arrivals(s, url, heavy, 10 * rate, until, []))
    await asyncio.gather(*jobs)
    return light_lat


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fleetd-fair-"))
    procs: list[Proc] = []
    delay = args.service_ms / CHUNKS
    try:
        sim = await spawn(
            "sim", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0", "--latency-ms", "0",
            "--token-delay-ms", str(delay), "--num-chunks", str(CHUNKS), "--size-scale",
            "0.0001", "--bandwidth", "0", "--preinstall", MODEL, env=ENV,
        )  # fmt: skip
        procs.append(sim)
        coord, _ = await start_fleet(
            sim.url,
            work,
            procs,
            coordinator_extra="max_requests_per_agent = 1\nqueue_timeout_s = 600\n"
            "queue_limit = 100000\n",
        )
        url = coord.url + "/v1/chat/completions"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:
            light, heavy = (
                await new_key(s, coord.url, "light"),
                await new_key(s, coord.url, "heavy"),
            )
            service = statistics.median(
                [x for x in [await one(s, url, light) for _ in range(20)] if x]
            )
            rate = 0.15 / service
            print(
                f"service time {1000 * service:.1f} ms; light {rate:.1f}/s, heavy {10 * rate:.1f}/s"
            )
            p50: dict[str, list[float]] = {"alone": [], "fair": [], "one-key": []}
            for i in range(args.rounds):
                for name, other, who in (
                    ("alone", None, light),
                    ("fair", heavy, light),
                    ("one-key", light, light),
                ):
                    lat = await phase(s, url, who, other, rate, args.seconds)
                    waits = [max(0.0, x - service) for x in lat]
                    p50[name].append(1000 * statistics.median(waits))
                    print(
                        f"round {i + 1}/{args.rounds} {name:<8} light requests {len(lat):>4}, "
                        f"p50 wait {p50[name][-1]:8.1f} ms, p50 latency "
                        f"{1000 * statistics.median(lat):8.1f} ms",
                        flush=True,
                    )
                    await asyncio.sleep(1)  # let heavy's backlog drain into the next phase
        alone, fair, fifo = (statistics.median(p50[k]) for k in ("alone", "fair", "one-key"))
        print(f"\nmedians over {args.rounds} rounds: light key's p50 wait (ms)")
        print(
            f"  alone {alone:.1f}; with a 10x heavy key, fair gate {fair:.1f}; one key {fifo:.1f}"
        )
        print(
            "  light p50 latency fair / alone: "
            f"{(fair + 1000 * service) / (alone + 1000 * service):.2f} (goal <= 2)"
        )
    finally:
        for p in reversed(procs):
            await p.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    p.add_argument("--service-ms", type=float, default=50.0, help="simulated time per reply")
    sys.exit(run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
