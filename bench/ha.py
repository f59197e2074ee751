"""Two coordinators on one PostgreSQL (issue 21): N agents split over both, one run.

N simulated agents heartbeat at the real interval, half of them to coordinator A and half
to B, both on one PostgreSQL started for the run (``tests/pg.py``: Debian's ``postgresql``
binaries, a temporary cluster). The floor is the bare coordinator
(``bench/bare_coordinator.py``) driven by N/2 agents in the same run by the same generator
(``bench/hbload.py``: heartbeats are the ``Heartbeat`` struct the agent sends, each reply's
status counted). Over ``--duration`` seconds, two intervals after the last registration, it
reads from ``/proc`` the CPU of each coordinator's process tree, of PostgreSQL's (the
postmaster and every backend) and of the generator itself. Goal: each coordinator ≤ 1.5x
the floor for its half. Agents misjudged offline are counted on both (log and list).
Meanwhile one agent of A's reports download progress to A twice a second, and the age of
each report when it shows on B's ``/api/events`` is recorded (goal ≤ 1 s).

    python -m bench.ha [--agents 5000] [--rounds 1] [--duration 60] [--settle 60]
                       [--connections 0] [--interval 5]

Rounds alternate the order (bare then pair, pair then bare, …) and the table gives medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

from bench.agents import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    AGENT_HEADERS,
    AGENT_TOKEN,
    HEARTBEAT_TIMEOUT_S,
    MODELS,
    OFFLINE_RE,
)
from bench.ha_report import SLICE_S, Window, report, round_line
from bench.hbload import HeartbeatLoad
from bench.proc_stats import own_cpu_s, tree_cpu_s
from bench.procs import Proc, spawn
from fleetd.core.gpu import Gpu
from fleetd.core.server import raise_open_files_limit, run
from fleetd.core.wire import Heartbeat
from tests.pg import PgServer, find_bindir


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLEETD_AGENT_TOKEN": AGENT_TOKEN,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


async def start_coordinator(name: str, tmp: Path, database_url: str) -> Proc:
    config = tmp / f"{name}.toml"
    body = f"[coordinator]\nheartbeat_timeout_s = {HEARTBEAT_TIMEOUT_S}\n"
    body += 'registry_url = "http://127.0.0.1:9"\n[coordinator.mirror]\nenabled = false\n'
    await asyncio.to_thread(config.write_text, body)
    args = ["-m", "fleetd", "--role", "coordinator", "--config", str(config)]
    args += ["--listen", "127.0.0.1:0", "--data-dir", str(tmp / name)]
    return await spawn(name, *args, env=_env(FLEETD_DATABASE_URL=database_url), watch=OFFLINE_RE)


class ProgressProbe:
    """Progress reports sent to A, and when each shows on B's ``/api/events``."""

    def __init__(self, session: aiohttp.ClientSession, a: str, b: str, load: HeartbeatLoad) -> None:
        """Reports come from ``load``'s first agent (registered with A)."""
        self.session, self.a, self.b, self.load = session, a, b, load
        self.agent_id = ""
        self.task_id = ""
        self.sent: dict[int, float] = {}
        self.ages: list[float] = []

    async def create_task(self) -> None:
        self.agent_id = self.load.ids[0]
        body = {"model": MODELS[0], "agents": [self.agent_id], "if_installed": "redownload"}
        async with self.session.post(
            self.a + "/api/distributions", json=body, headers=ADMIN_HEADERS
        ) as r:
            reply = await r.json()
        self.task_id = reply["tasks"][0]["id"]

    async def listen(self) -> None:
        async with self.session.get(
            self.b + "/api/events", headers=ADMIN_HEADERS, timeout=aiohttp.ClientTimeout()
        ) as r:
            kind = ""
            async for raw in r.content:
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "task":
                    t = json.loads(line[6:])
                    at = self.sent.pop(t["completed_bytes"], None)
                    if t["id"] == self.task_id and at is not None:
                        self.ages.append(time.monotonic() - at)

    async def report(self, duration: float) -> None:
        url = f"{self.a}/api/agents/{self.agent_id}/progress"
        end = time.monotonic() + duration
        k = 0
        while time.monotonic() < end:
            k += 1
            update = {
                "task_id": self.task_id,
                "status": "downloading",
                "completed_bytes": k * 1_000_000,
                "total_bytes": 10**12,
            }
            self.sent[k * 1_000_000] = time.monotonic()
            async with self.session.post(
                url, data=json.dumps({"tasks": [update]}), headers=AGENT_HEADERS
            ) as r:
                await r.read()
            await asyncio.sleep(0.5)


class _Listed(msgspec.Struct):
    """What ``GET /api/agents`` says of an agent that a heartbeat sets."""

    id: str
    status: str = "online"
    requests_in_flight: int = 0
    cpu_percent: float | None = None
    gpus: list[Gpu] = msgspec.field(default_factory=list)


class _Agents(msgspec.Struct):
    agents: list[_Listed]


async def check_list(
    session: aiohttp.ClientSession, load: HeartbeatLoad, w: Window, name: str
) -> None:
    """Count the agents ``load``'s coordinator lists and those it has offline, and check it
    holds the figures of each agent's last accepted heartbeat (proof that it applied them)."""
    async with session.get(load.url + "/api/agents", headers=ADMIN_HEADERS) as r:
        r.raise_for_status()
        agents = msgspec.json.decode(await r.read(), type=_Agents).agents
    w.listed[name] = len(agents)
    w.offline += sum(a.status != "online" for a in agents)
    by_id = {a.id: a for a in agents}
    for i, agent_id in enumerate(load.ids):
        body = load.last_accepted(i)
        if body is None or agent_id not in by_id:
            continue
        sent, held = msgspec.json.decode(body, type=Heartbeat), by_id[agent_id]
        w.checked += 1
        if (held.requests_in_flight, held.cpu_percent, held.gpus) != (
            sent.requests_in_flight,
            sent.cpu_percent,
            sent.gpus,
        ):
            w.mismatched += 1


async def _slices(pids: dict[str, int], out: dict[str, list[float]]) -> None:
    loop = asyncio.get_running_loop()
    prev, t = {k: await asyncio.to_thread(tree_cpu_s, p) for k, p in pids.items()}, loop.time()
    while True:
        await asyncio.sleep(SLICE_S)
        cur, now = {k: await asyncio.to_thread(tree_cpu_s, p) for k, p in pids.items()}, loop.time()
        for k in pids:
            out.setdefault(k, []).append(100 * (cur[k] - prev[k]) / (now - t))
        prev, t = cur, now


async def drive(
    loads: dict[str, HeartbeatLoad],
    pids: dict[str, int],
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    probe: ProgressProbe | None = None,
) -> Window:
    """Register every load's agents (each heartbeats from its registration on), wait
    ``args.settle`` seconds, then measure ``args.duration`` seconds; ``probe`` reports
    progress throughout the window."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    runs = [asyncio.create_task(x.run(t0)) for x in loads.values()]
    aux: list[asyncio.Task[None]] = []
    w = Window()
    try:
        await asyncio.gather(*(x.register_all(session) for x in loads.values()))
        # Registration leaves work behind (installed-model writes, other coordinators
        # reading the new agents): the window opens once it is done.
        await asyncio.sleep(max(2 * args.interval, args.settle))
        if probe is not None:
            await probe.create_task()
            aux.append(asyncio.create_task(probe.listen()))
            await asyncio.sleep(0.5)
        for x in loads.values():
            x.reset_window()
        cpu0 = {k: await asyncio.to_thread(tree_cpu_s, p) for k, p in pids.items()}
        beats0 = {k: x.heartbeats for k, x in loads.items()}
        own0, w0 = own_cpu_s(), loop.time()
        aux.append(asyncio.create_task(_slices(pids, w.slices)))
        if probe is None:
            await asyncio.sleep(args.duration)
        else:
            await probe.report(args.duration)
        aux[-1].cancel()
        cpu1 = {k: await asyncio.to_thread(tree_cpu_s, p) for k, p in pids.items()}
        own1, w1 = own_cpu_s(), loop.time()
        beats1 = {k: x.heartbeats for k, x in loads.items()}
        for t in runs:
            t.cancel()
        for x in loads.values():
            x.close()
        for k, x in loads.items():
            await check_list(session, x, w, k)
    finally:
        for t in [*runs, *aux]:
            t.cancel()
        await asyncio.gather(*aux, return_exceptions=True)
        done = await asyncio.gather(*runs, return_exceptions=True)
        for x in loads.values():
            x.close()
    for outcome in done:
        if isinstance(outcome, Exception):
            raise outcome
    span = w1 - w0
    w.cpu = {k: 100 * (cpu1[k] - cpu0[k]) / span for k in pids}
    w.rate = {k: (beats1[k] - beats0[k]) / span for k in loads}
    w.target = {k: x.n / x.interval for k, x in loads.items()}
    w.generator_cpu = 100 * (own1 - own0) / span
    w.max_lag = max(x.max_lag for x in loads.values())
    w.max_queue = max(x.max_queue for x in loads.values())
    w.max_gap = max(x.max_gap for x in loads.values())
    w.skipped = sum(x.skipped for x in loads.values())
    w.non_200 = [f"{k}: {x.non_200()}" for k, x in loads.items()]
    if probe is not None:
        w.ages = sorted(probe.ages)
    return w


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def run_bare(args: argparse.Namespace) -> Window:
    """The floor: the bare coordinator with half the agents."""
    bare = await spawn(
        "bare", "-m", "bench.bare_coordinator", "--listen", "127.0.0.1:0", env=_env()
    )
    try:
        async with _session() as session:
            load = HeartbeatLoad(
                bare.url, AGENT_TOKEN, args.agents // 2, args.interval, conns=args.connections
            )
            return await drive({"bare": load}, {"bare": bare.proc.pid}, args, session)
    finally:
        await bare.stop()


async def run_pair(args: argparse.Namespace, pg: PgServer) -> Window:
    """A and B on one fresh database, half the agents each."""
    n, interval = args.agents, args.interval
    database_url = await asyncio.to_thread(pg.create_database)
    assert pg.proc is not None
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        a = await start_coordinator("A", Path(tmp), database_url)
        b = await start_coordinator("B", Path(tmp), database_url)
        try:
            async with _session() as session:
                loads = {
                    "A": HeartbeatLoad(
                        a.url, AGENT_TOKEN, n // 2, interval, conns=args.connections
                    ),
                    "B": HeartbeatLoad(
                        b.url,
                        AGENT_TOKEN,
                        n - n // 2,
                        interval,
                        first=n // 2,
                        conns=args.connections,
                    ),
                }
                probe = ProgressProbe(session, a.url, b.url, loads["A"])
                pids = {"A": a.proc.pid, "B": b.proc.pid, "PostgreSQL": pg.proc.pid}
                w = await drive(loads, pids, args, session, probe)
        finally:
            await a.stop()
            await b.stop()
    w.offline += a.matches + b.matches
    return w


async def main_async(args: argparse.Namespace) -> int:
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (apt-get install postgresql)", file=sys.stderr)
        return 1
    pg = await asyncio.to_thread(PgServer, bindir)
    try:
        await asyncio.to_thread(pg.start)
        for n in [int(x) for x in args.agents.split(",")]:
            nargs = argparse.Namespace(**{**vars(args), "agents": n})
            bare: list[Window] = []
            pair: list[Window] = []
            for rnd in range(args.rounds):
                order = ("bare", "pair") if rnd % 2 == 0 else ("pair", "bare")
                for kind in order:
                    print(f"round {rnd + 1}/{args.rounds}: {kind}, {n} agents …", flush=True)
                    if kind == "bare":
                        bare.append(await run_bare(nargs))
                        print(round_line(kind, bare[-1]), flush=True)
                    else:
                        pair.append(await run_pair(nargs, pg))
                        print(round_line(kind, pair[-1]), flush=True)
            report(n, nargs, bare, pair)
    finally:
        await asyncio.to_thread(pg.close)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ha", description=__doc__.splitlines()[0])
    p.add_argument("--agents", default="5000", help="agent count(s), comma-separated")
    p.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, seconds")
    p.add_argument("--duration", type=float, default=60.0, help="CPU measurement window, s")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds; medians reported")
    p.add_argument(
        "--connections",
        type=int,
        default=0,
        help="keep-alive connections per coordinator; 0 (default): one per agent, as a fleet",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="seconds from the last registration to the window (at least two intervals)",
    )
    raise_open_files_limit()  # --connections 0 holds one socket per agent
    sys.exit(run(main_async(p.parse_args())))  # uvloop when installed, as fleetd runs


if __name__ == "__main__":
    main()
