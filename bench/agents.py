"""Heartbeat scale: N simulated agents against fleetd's coordinator and a bare one, same run.

One process simulates N agents: each registers (name, a URL such as
``http://127.0.0.1:9/sim/17``, GPUs) and then heartbeats at the real interval with the body a
real agent sends, the N schedules spread evenly over the interval. All N register at once,
as when a whole fleet restarts, each starting to heartbeat as soon as it is registered. Two
intervals after the last registration, for each target it measures the CPU time of the
target's process tree from ``/proc`` over ``--duration`` seconds, its RSS at the end, the
median time of ``GET /api/agents`` and the agents the target judged offline although they
kept heartbeating. The figure judged is fleetd's CPU over the bare coordinator's
(``bench/bare_coordinator.py``).

    python -m bench.agents [--agents 1000,5000,10000] [--interval 5] [--duration 60]

The load generator runs on the same cores as the target; its own CPU, the heartbeat rate it
achieved and its worst lag behind schedule are printed so a saturated generator shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench.agents_report import Result, print_profile, report, report_bursts
from bench.proc_stats import own_cpu_s, thread_cpu_s, tree_cpu_s, tree_rss_mb
from bench.procs import Proc, spawn
from fleetd.core.server import run

ADMIN_TOKEN = "bench-admin-token"
AGENT_TOKEN = "bench-agent-token"
AGENT_HEADERS = {"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HEARTBEAT_TIMEOUT_S = 20.0
GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_MEMORY = 85_899_345_920
MODELS = ["gpt-oss:20b", "gpt-oss:120b", "gpt-oss-safeguard:20b", "qwen3-coder:30b"]
OFFLINE_RE = re.compile(r"offline: silent")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


class _Reply(msgspec.Struct):
    """Registration answers with the agent object itself."""

    id: str


class _Status(msgspec.Struct):
    status: str = "online"


class _AgentList(msgspec.Struct):
    agents: list[_Status]


# --- targets -----------------------------------------------------------------------------


async def start_target(kind: str, data_dir: Path, profile: Path | None) -> Proc:
    """fleetd's coordinator (``kind`` "fleetd", its offline verdicts counted from its log) or
    the bare one ("bare")."""
    env = {
        **os.environ,
        "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLEETD_AGENT_TOKEN": AGENT_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    if kind == "bare":
        return await spawn(kind, "-m", "bench.bare_coordinator", "--listen", "127.0.0.1:0", env=env)
    config = data_dir / "coordinator.toml"
    toml = f"[coordinator]\nheartbeat_timeout_s = {HEARTBEAT_TIMEOUT_S}\n"
    await asyncio.to_thread(config.write_text, toml)
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    args = [*prof, "-m", "fleetd", "--role", "coordinator", "--config", str(config)]
    args += ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir / "data")]
    return await spawn(kind, *args, env=env, watch=OFFLINE_RE)


# --- simulated agents --------------------------------------------------------------------


class SimAgent:
    """One simulated agent: its registration and the figures its heartbeats report."""

    __slots__ = ("body", "gpus", "id", "index", "last_ok", "max_gap", "phase")

    def __init__(self, index: int, phase: float, gpus: int) -> None:
        self.index = index
        self.phase = phase
        self.id = ""
        self.last_ok = 0.0
        self.max_gap = 0.0
        self.gpus: list[dict[str, Any]] = [
            {"name": GPU_NAME, "memory_bytes": GPU_MEMORY} for _ in range(gpus)
        ]
        self.body = msgspec.json.encode(
            {
                "name": f"sim-{index}",
                "url": f"http://127.0.0.1:9/sim/{index}",
                "gpus": self.gpus,
                "instance_id": uuid.uuid4().hex,
                "version": "bench",
                "ollama_versions": ["0.12.6"],
                "models": [
                    {"name": m, "size": 13_000_000_000, "digest": f"sha256:{i:064x}"}
                    for i, m in enumerate(MODELS)
                ],
            }
        )

    def heartbeat(self, rng: random.Random) -> bytes:
        """The body ``Link.heartbeat_once`` sends, with figures that move like real ones."""
        for g in self.gpus:
            g["memory_used_bytes"] = rng.randrange(GPU_MEMORY // 2, GPU_MEMORY)
            g["utilization"] = round(rng.random(), 2)
        return msgspec.json.encode(
            {
                "initializing": False,
                "ready_models": len(MODELS),
                "total_models": len(MODELS),
                "requests_in_flight": rng.randrange(8),
                "gpus": self.gpus,
                "cpu_percent": round(rng.uniform(2, 60), 1),
                "memory_percent": round(rng.uniform(20, 40), 1),
                "status_message": "",
                "loaded_models": MODELS[:1],
            }
        )


@dataclass
class Load:
    """Drives N simulated agents with a few tasks sharing one ClientSession."""

    session: aiohttp.ClientSession
    url: str
    interval: float
    registered: int = 0
    last_registered: float = 0.0
    heartbeats: int = 0
    reregistered: int = 0
    errors: int = 0
    max_lag: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(12))

    async def register(self, a: SimAgent) -> None:
        async with self.session.post(
            self.url + "/api/agents", data=a.body, headers=AGENT_HEADERS, timeout=REQUEST_TIMEOUT
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"registration refused: HTTP {r.status}: {body[:200]!r}")
        a.id = msgspec.json.decode(body, type=_Reply).id
        a.last_ok = self.last_registered = asyncio.get_running_loop().time()
        self.registered += 1

    async def beat(self, a: SimAgent) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.session.post(
                f"{self.url}/api/agents/{a.id}/heartbeat",
                data=a.heartbeat(self.rng),
                headers=AGENT_HEADERS,
                timeout=REQUEST_TIMEOUT,
            ) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.errors += 1
            return
        if status == 404:  # forgotten: a real agent registers again
            self.reregistered += 1
            await self.register(a)
            return
        if status != 200:
            self.errors += 1
            return
        now = loop.time()
        a.max_gap = max(a.max_gap, now - a.last_ok)
        a.last_ok = now
        self.heartbeats += 1

    async def register_all(self, agents: Sequence[SimAgent]) -> None:
        """Register ``agents`` one after another, as a fleet does when it starts."""
        for a in agents:
            await self.register(a)

    async def drive(self, agents: Sequence[SimAgent], t0: float) -> None:
        """Each agent's slot comes once per interval, from its registration on; an agent
        still waiting for its registration skips its slot, so a slow registration burst
        never delays the heartbeats of agents already registered."""
        loop = asyncio.get_running_loop()
        base = t0
        while True:
            for a in agents:
                if not a.id:
                    continue
                delay = base + a.phase - loop.time()
                if delay > 0.002:
                    await asyncio.sleep(delay)
                elif delay < 0:
                    self.max_lag = max(self.max_lag, -delay)
                await self.beat(a)
            base += self.interval
            await asyncio.sleep(max(0.0, base - loop.time()))

    def reset_window(self) -> None:
        """Lag counts from the measurement window on; gaps count over the whole run, as
        the target's offline verdicts do."""
        self.max_lag = 0.0


# --- one measurement ---------------------------------------------------------------------


async def time_list(session: aiohttp.ClientSession, url: str, n: int) -> tuple[float, int]:
    """Median of five ``GET /api/agents`` (body fully read) and how many agents are offline."""
    times: list[float] = []
    body = b""
    for _ in range(5):
        t = time.perf_counter()
        async with session.get(url + "/api/agents", headers=ADMIN_HEADERS) as r:
            body = await r.read()
            r.raise_for_status()
        times.append(time.perf_counter() - t)
    agents = msgspec.json.decode(body, type=_AgentList).agents
    if len(agents) != n:
        print(f"  warning: the list holds {len(agents)} agents, expected {n}", file=sys.stderr)
    return statistics.median(times) * 1000, sum(a.status != "online" for a in agents)


class SseMeter:
    """One dashboard's ``/api/events`` stream, read as fast as it comes; bytes counted."""

    def __init__(self) -> None:
        self.bytes = 0

    async def read(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(
            url + "/api/events", headers=ADMIN_HEADERS, timeout=aiohttp.ClientTimeout()
        ) as r:
            r.raise_for_status()
            async for chunk in r.content.iter_any():
                self.bytes += len(chunk)


async def measure(kind: str, n: int, args: argparse.Namespace, profile: Path | None) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"bench-agents-{kind}-") as tmp:
        target = await start_target(kind, Path(tmp), profile)
        workers = args.workers or max(32, n // 100)
        # One connection per registering and per heartbeating task, and spares so that the
        # timed GET /api/agents never waits for a heartbeat's.
        connector = aiohttp.TCPConnector(limit=2 * workers + 4, limit_per_host=0)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                return await _drive_and_measure(target, session, n, workers, args)
        finally:
            await target.stop()


async def _drive_and_measure(
    target: Proc, session: aiohttp.ClientSession, n: int, workers: int, args: argparse.Namespace
) -> Result:
    interval: float = args.interval
    agents = [SimAgent(i, i * interval / n, args.gpus) for i in range(n)]
    load = Load(session, target.url, interval)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    drivers = [
        *(asyncio.create_task(load.register_all(agents[w::workers])) for w in range(workers)),
        *(asyncio.create_task(load.drive(agents[w::workers], t0)) for w in range(workers)),
    ]
    sse = SseMeter()
    if target.name == "fleetd":
        drivers.append(asyncio.create_task(sse.read(session, target.url)))
    try:
        while load.registered < n:
            await asyncio.sleep(0.2)
            for d in drivers:
                if d.done() and d.exception() is not None:
                    # a refused registration ends the run with its reason and the target's log
                    print("\n".join(target.tail), file=sys.stderr)
                    d.result()
        register_s = load.last_registered - t0
        await asyncio.sleep(2 * interval)  # let the first heartbeats of every agent land
        load.reset_window()
        cpu0 = await asyncio.to_thread(tree_cpu_s, target.proc.pid)
        loop0 = await asyncio.to_thread(thread_cpu_s, target.proc.pid)
        beats, own0, w0, sse0 = load.heartbeats, own_cpu_s(), loop.time(), sse.bytes
        await asyncio.sleep(args.duration)
        sse1 = sse.bytes
        cpu1 = await asyncio.to_thread(tree_cpu_s, target.proc.pid)
        loop1 = await asyncio.to_thread(thread_cpu_s, target.proc.pid)
        own1, w1 = own_cpu_s(), loop.time()
        rate = (load.heartbeats - beats) / (w1 - w0)
        rss = await asyncio.to_thread(tree_rss_mb, target.proc.pid)
        list_ms, offline_now = await time_list(session, target.url, n)
    finally:
        for d in drivers:
            d.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
    if load.errors or load.reregistered:
        print(
            f"  {target.name}: {load.errors} failed heartbeats, "
            f"{load.reregistered} re-registrations",
            file=sys.stderr,
        )
    return Result(
        kind=target.name,
        n=n,
        cpu_pct=100 * (cpu1 - cpu0) / (w1 - w0),
        loop_cpu_pct=100 * (loop1 - loop0) / (w1 - w0),
        rss_mb=rss,
        list_ms=list_ms,
        offline=(target.matches + offline_now) if target.name == "fleetd" else None,
        load_cpu_pct=100 * (own1 - own0) / (w1 - w0),
        hb_rate=rate,
        max_lag=load.max_lag,
        max_gap=max(a.max_gap for a in agents),
        register_s=register_s,
        sse_kb_s=(sse1 - sse0) / (w1 - w0) / 1000 if target.name == "fleetd" else None,
    )


async def main_async(args: argparse.Namespace) -> int:
    ns = [int(x) for x in args.agents.split(",")]
    kinds = [k for k in ("fleetd", "bare") if k in args.targets.split(",")]
    results: list[Result] = []
    profiles: list[Path] = []
    load = os.getloadavg()
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for rnd in range(args.rounds):
        for n in ns:
            for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
                profile = None
                if args.profile and kind == "fleetd":
                    profile = args.profile / f"fleetd-{n}-{rnd}.prof"
                print(f"round {rnd + 1}/{args.rounds}: {kind} with {n} agents …", flush=True)
                r = await measure(kind, n, args, profile)
                r.rnd = rnd
                results.append(r)
                print(
                    f"  registered in {r.register_s:.2f} s; CPU {r.cpu_pct:.1f} % "
                    f"({r.loop_cpu_pct:.1f} % in the event-loop thread), "
                    f"RSS {r.rss_mb:.0f} MB, list {r.list_ms:.0f} ms, "
                    f"{r.hb_rate:.0f} heartbeats/s, load gen CPU {r.load_cpu_pct:.0f} %"
                    + (f", /api/events {r.sse_kb_s:.0f} KB/s" if r.sse_kb_s is not None else ""),
                    flush=True,
                )
                if profile is not None:
                    profiles.append(profile)
            burst = {r.kind: r.register_s for r in results if r.n == n and r.rnd == rnd}
            if len(burst) == 2:
                ratio = burst["fleetd"] / burst["bare"]
                print(f"  registration burst, fleetd / bare: {ratio:.2f}×", flush=True)
    report(results, ns, args.interval, HEARTBEAT_TIMEOUT_S)
    report_bursts(results, ns)
    for p in profiles:
        print_profile(p)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.agents", description=__doc__.split("\n")[0] if __doc__ else None
    )
    p.add_argument("--agents", default="1000,5000,10000", help="comma-separated agent counts")
    p.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, seconds")
    p.add_argument("--duration", type=float, default=60.0, help="CPU measurement window, s")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians reported")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per simulated agent")
    p.add_argument(
        "--workers", type=int, default=0, help="heartbeat tasks (default: N/100, at least 32)"
    )
    p.add_argument("--targets", default="fleetd,bare", help="which coordinators to run")
    p.add_argument("--profile", metavar="DIR", help="run fleetd under cProfile, write .prof here")
    args = p.parse_args()
    if args.profile:
        args.profile = Path(args.profile).resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    sys.exit(run(main_async(args)))


if __name__ == "__main__":
    main()
