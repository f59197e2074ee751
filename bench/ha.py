"""Two coordinators on one PostgreSQL (issue 21): N agents split over both, one run.

N simulated agents (``bench/agents.py``'s, the body a real agent sends) heartbeat at the
real interval, half of them to coordinator A and half to B, both on one PostgreSQL started
for the run (``tests/pg.py``: Debian's ``postgresql`` binaries, a temporary cluster). Over
``--duration`` seconds it measures each coordinator's CPU (process tree, ``/proc``) and
PostgreSQL's (the postmaster's tree: every backend), against the bare coordinator's
(``bench/bare_coordinator.py``) driven by N/2 agents in the same run: the goal is each
coordinator ≤ 1.5x the bare floor for its half. Agents misjudged offline are counted on
both. Meanwhile one agent of A's reports download progress to A twice a second, and the
age of each report when it shows on B's ``/api/events`` is recorded (goal ≤ 1 s).

    python -m bench.ha [--agents 5000] [--interval 5] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.agents import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    AGENT_HEADERS,
    AGENT_TOKEN,
    HEARTBEAT_TIMEOUT_S,
    MODELS,
    OFFLINE_RE,
    Load,
    SimAgent,
    measure,
    time_list,
)
from bench.proc_stats import tree_cpu_s
from bench.procs import Proc, spawn
from tests.pg import PgServer, find_bindir


async def start_coordinator(name: str, tmp: Path, database_url: str) -> Proc:
    env = {
        **os.environ,
        "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLEETD_AGENT_TOKEN": AGENT_TOKEN,
        "FLEETD_DATABASE_URL": database_url,
        "PYTHONUNBUFFERED": "1",
    }
    config = tmp / f"{name}.toml"
    body = f"[coordinator]\nheartbeat_timeout_s = {HEARTBEAT_TIMEOUT_S}\n"
    body += 'registry_url = "http://127.0.0.1:9"\n[coordinator.mirror]\nenabled = false\n'
    await asyncio.to_thread(config.write_text, body)
    args = ["-m", "fleetd", "--role", "coordinator", "--config", str(config)]
    args += ["--listen", "127.0.0.1:0", "--data-dir", str(tmp / name)]
    return await spawn(name, *args, env=env, watch=OFFLINE_RE)


class ProgressProbe:
    """Progress reports sent to A, and when each shows on B's ``/api/events``."""

    def __init__(self, session: aiohttp.ClientSession, a: str, b: str, agent: SimAgent) -> None:
        self.session, self.a, self.b, self.agent = session, a, b, agent
        self.task_id = ""
        self.sent: dict[int, float] = {}
        self.ages: list[float] = []

    async def create_task(self) -> None:
        body = {"model": MODELS[0], "agents": [self.agent.id], "if_installed": "redownload"}
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
        url = f"{self.a}/api/agents/{self.agent.id}/progress"
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


async def run_pair(args: argparse.Namespace, pg: PgServer) -> dict[str, float | int | str]:
    n, interval = args.agents, args.interval
    database_url = pg.create_database()
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        a = await start_coordinator("A", Path(tmp), database_url)
        b = await start_coordinator("B", Path(tmp), database_url)
        workers = max(32, n // 100)
        connector = aiohttp.TCPConnector(limit=4 * workers + 8, limit_per_host=0)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                agents = [SimAgent(i, i * interval / n, args.gpus) for i in range(n)]
                loads = [Load(session, a.url, interval), Load(session, b.url, interval)]
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                drivers = []
                for load, half in zip(loads, (agents[0::2], agents[1::2]), strict=True):
                    for w in range(workers // 2):
                        drivers.append(
                            asyncio.create_task(load.register_all(half[w :: workers // 2]))
                        )
                        drivers.append(asyncio.create_task(load.drive(half[w :: workers // 2], t0)))
                try:
                    while sum(x.registered for x in loads) < n:
                        await asyncio.sleep(0.2)
                        for d in drivers:
                            if d.done() and d.exception() is not None:
                                d.result()
                    await asyncio.sleep(2 * interval)
                    probe = ProgressProbe(session, a.url, b.url, agents[0])
                    await probe.create_task()
                    listener = asyncio.create_task(probe.listen())
                    await asyncio.sleep(0.5)
                    pids = {"A": a.proc.pid, "B": b.proc.pid}
                    assert pg.proc is not None
                    pids["PostgreSQL"] = pg.proc.pid
                    cpu0 = {k: await asyncio.to_thread(tree_cpu_s, p) for k, p in pids.items()}
                    for x in loads:
                        x.reset_window()
                    beats0, w0 = [x.heartbeats for x in loads], loop.time()
                    await probe.report(args.duration)
                    cpu1 = {k: await asyncio.to_thread(tree_cpu_s, p) for k, p in pids.items()}
                    w1 = loop.time()
                    beats1 = [x.heartbeats for x in loads]
                    listener.cancel()
                    offline = a.matches + b.matches
                    for c in (a, b):
                        offline += (await time_list(session, c.url, n))[1]
                finally:
                    for d in drivers:
                        d.cancel()
                    await asyncio.gather(*drivers, return_exceptions=True)
        finally:
            await a.stop()
            await b.stop()
    out: dict[str, float | int | str] = {
        f"{k} CPU %": 100 * (cpu1[k] - cpu0[k]) / (w1 - w0) for k in pids
    }
    out["misjudged offline"] = offline
    out["heartbeat errors"] = sum(x.errors for x in loads)
    for i, c in enumerate("AB"):
        out[f"{c} heartbeats/s (target {n / interval / 2:.0f})"] = (beats1[i] - beats0[i]) / (
            w1 - w0
        )
    out["load generator: max lag s"] = max(x.max_lag for x in loads)
    out["longest silence of any agent s"] = max(x.max_gap for x in agents)
    ages = sorted(probe.ages) or [float("nan")]
    out["progress reports seen on B"] = len(probe.ages)
    out["progress age on B, median s"] = statistics.median(ages)
    out["progress age on B, max s"] = ages[-1]
    return out


async def main_async(args: argparse.Namespace) -> int:
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (apt-get install postgresql)", file=sys.stderr)
        return 1
    pg = PgServer(bindir)
    try:
        pg.start()
        bare_args = argparse.Namespace(**{**vars(args), "workers": 0})
        bare = await measure("bare", args.agents // 2, bare_args, None)
        pair = await run_pair(args, pg)
    finally:
        pg.close()
    floor = bare.cpu_pct
    print(f"\n{args.agents} agents, 1 heartbeat / {args.interval:g} s, split over A and B")
    print("| figure | value |\n|---|---|")
    print(f"| bare coordinator CPU % for {args.agents // 2} agents (floor) | {floor:.1f} |")
    print(f"| bare coordinator heartbeats/s | {bare.hb_rate:.0f} |")
    for k, v in pair.items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    # Per heartbeat served, so that a load generator short of its target on a busy host
    # (the heartbeat rates above) does not pass for a cheap coordinator.
    for c in "AB":
        cpu, rate = (
            v for k, v in pair.items() if k == f"{c} CPU %" or k.startswith(f"{c} heartbeats/s")
        )
        assert isinstance(cpu, float) and isinstance(rate, float)
        ratio = (cpu / rate) / (floor / bare.hb_rate)
        print(f"| {c} CPU per heartbeat / floor's (goal ≤ 1.5) | {ratio:.2f} |")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=5000)
    p.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, seconds")
    p.add_argument("--duration", type=float, default=60.0, help="CPU measurement window, s")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per simulated agent")
    sys.exit(asyncio.run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
