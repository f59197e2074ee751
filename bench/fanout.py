"""Distribution fan-out: from ``POST /api/distributions`` to "downloading" on every agent.

A real coordinator (subprocess) and N simulated agents in this process, all behind one aiohttp
server, each with its own URL path (``http://127.0.0.1:PORT/sim/17``) speaking the agent API:
they register with every supported model installed (so nothing is ordered on registration),
heartbeat, accept orders (answering "downloading" at once) and then report progress every
0.5 s for a few seconds, as real agents do. For each round it measures, from the moment the
POST is sent:

- POST: until the coordinator answered;
- orders: until the last agent received its order;
- SSE: until ``GET /api/events`` has shown every task of the distribution as downloading;
- progress age: from an agent sending a progress figure to that figure arriving on the SSE
  stream (each figure is unique, so it can be matched), and the longest silence between two
  messages of one running task on the stream;
- relay CPU: the coordinator's CPU time (from ``/proc``) while every agent's download runs,
  from the last task shown downloading to the last shown completed, as % of one core.

    python -m bench.fanout [--agents 10,100] [--rounds 3]

Goals (issue 12): 100 agents all report downloading within 1 s of the order, progress on
``/api/events`` never more than 1 s old, and the coordinator under 50 % of one core while it
relays the progress of 100 concurrent downloads.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from bench.proc_stats import tree_cpu_s
from bench.procs import Proc, spawn
from fleetd.core.server import run
from fleetd.core.wire import Order, ProgressReport, TaskUpdate

ADMIN_TOKEN = "bench-admin-token"
AGENT_TOKEN = "bench-agent-token"
AGENT_HEADERS = {"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SUPPORTED = ["gpt-oss:20b", "gpt-oss:120b", "gpt-oss-safeguard:20b", "qwen3-coder:30b"]
INSTALLED = [{"name": m, "size": 13_000_000_000} for m in SUPPORTED]
GPUS = [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_899_345_920}]
TOTAL_BYTES = 13_793_441_244
REPORT_EVERY_S = 0.5
REPORTS = 8
"""Progress reports per task before it completes (about 4 s of "download")."""


class _Reply(msgspec.Struct):
    id: str


class SimAgents:
    """N agents behind one server; orders and progress timings are recorded here."""

    def __init__(self, n: int, session: aiohttp.ClientSession, coordinator: str) -> None:
        self.n = n
        self.session = session
        self.coordinator = coordinator
        self.base = ""
        self.ids: dict[int, str] = {}
        self.ordered: dict[str, float] = {}  # task id -> monotonic time its order arrived
        self.sent: dict[tuple[str, int], float] = {}  # (task id, bytes) -> time reported
        self.jobs: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sim/{n}/fleetd/tasks", self.order)
        app.router.add_post("/sim/{n}/fleetd/tasks/{id}/cancel", self.cancel)
        app.router.add_get("/sim/{n}/fleetd/models", self.models)
        return app

    async def order(self, request: web.Request) -> web.Response:
        o = msgspec.json.decode(await request.read(), type=Order)
        self.ordered.setdefault(o.task_id, time.monotonic())
        agent_id = self.ids[int(request.match_info["n"])]
        job = asyncio.create_task(self.download(agent_id, o.task_id))
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)
        update = TaskUpdate(task_id=o.task_id, status="downloading", total_bytes=TOTAL_BYTES)
        return web.Response(body=msgspec.json.encode(update), content_type="application/json")

    async def cancel(self, request: web.Request) -> web.Response:
        return web.json_response({"task_id": request.match_info["id"], "status": "cancelled"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": INSTALLED})

    async def download(self, agent_id: str, task_id: str) -> None:
        """Report progress every half second, each figure unique, then complete."""
        for i in range(1, REPORTS + 1):
            await asyncio.sleep(REPORT_EVERY_S)
            done = i * TOTAL_BYTES // (REPORTS + 1) + 1
            status = "downloading" if i < REPORTS else "completed"
            if status == "completed":
                done = TOTAL_BYTES
            u = TaskUpdate(
                task_id=task_id,
                status=status,
                completed_bytes=done,
                total_bytes=TOTAL_BYTES,
                speed_bps=TOTAL_BYTES / (REPORTS + 1) / REPORT_EVERY_S,
            )
            self.sent[(task_id, done)] = time.monotonic()
            url = f"{self.coordinator}/api/agents/{agent_id}/progress"
            body = msgspec.json.encode(ProgressReport(tasks=[u]))
            async with self.session.post(url, data=body, headers=AGENT_HEADERS) as r:
                await r.read()

    async def register(self) -> None:
        async def one(i: int) -> None:
            body = {
                "name": f"sim-{i}",
                "url": f"{self.base}/sim/{i}",
                "gpus": GPUS,
                "instance_id": f"bench-{i}",
                "models": INSTALLED,
            }
            async with self.session.post(
                self.coordinator + "/api/agents", json=body, headers=AGENT_HEADERS
            ) as r:
                reply = msgspec.json.decode(await r.read(), type=_Reply)
            self.ids[i] = reply.id
            await self.heartbeat(i)

        await asyncio.gather(*(one(i) for i in range(self.n)))

    async def heartbeat(self, i: int) -> None:
        body = {"initializing": False, "ready_models": 4, "total_models": 4}
        url = f"{self.coordinator}/api/agents/{self.ids[i]}/heartbeat"
        async with self.session.post(url, json=body, headers=AGENT_HEADERS) as r:
            await r.read()

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(5)
            await asyncio.gather(*(self.heartbeat(i) for i in range(self.n)))


class Events:
    """The coordinator's SSE stream: task messages with the time each arrived."""

    def __init__(self) -> None:
        self.tasks: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    async def follow(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url + "/api/events", headers=ADMIN_HEADERS) as r:
            kind = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "task":
                    self.tasks.append((time.monotonic(), msgspec.json.decode(line[6:])))
                    self.changed.set()


async def start_coordinator(data_dir: Path) -> Proc:
    config = data_dir / "coordinator.toml"
    await asyncio.to_thread(config.write_text, "[coordinator]\nheartbeat_timeout_s = 30\n")
    env = {
        **os.environ,
        "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLEETD_AGENT_TOKEN": AGENT_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    return await spawn(
        "coordinator", "-m", "fleetd", "--role", "coordinator", "--config", str(config),
        "--listen", "127.0.0.1:0", "--data-dir", str(data_dir / "data"), env=env,
    )  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one_round(
    session: aiohttp.ClientSession, url: str, pid: int, sims: SimAgents, events: Events, r: int
) -> dict[str, float]:
    model = f"bench-fanout-{r}:latest"
    start = len(events.tasks)
    t0 = time.monotonic()
    async with session.post(
        url + "/api/distributions", json={"model": model, "agents": "all"}, headers=ADMIN_HEADERS
    ) as resp:
        body = await resp.json()
    t_post = time.monotonic() - t0
    ids = {t["id"] for t in body["tasks"]}
    if len(ids) != sims.n:
        sys.exit(f"expected {sims.n} tasks, got {body}")
    downloading: set[str] = set()
    while len(downloading) < len(ids):
        events.changed.clear()
        for _, obj in events.tasks[start:]:
            if obj["id"] in ids and obj["status"] == "downloading":
                downloading.add(obj["id"])
        if len(downloading) < len(ids):
            await asyncio.wait_for(events.changed.wait(), 10)
    first: dict[str, float] = {}
    for at, obj in events.tasks[start:]:
        if obj["id"] in ids and obj["status"] == "downloading":
            first.setdefault(obj["id"], at)
    t_sse = max(first.values())
    t_orders = max(sims.ordered[i] for i in ids) - t0
    cpu0, w0 = await asyncio.to_thread(tree_cpu_s, pid), time.monotonic()
    while not all(
        any(obj["id"] == i and obj["status"] == "completed" for _, obj in events.tasks[start:])
        for i in ids
    ):
        events.changed.clear()
        await asyncio.wait_for(events.changed.wait(), 30)
    cpu1, w1 = await asyncio.to_thread(tree_cpu_s, pid), time.monotonic()
    ages: list[float] = []
    times: dict[str, list[float]] = {}
    for at, obj in events.tasks[start:]:
        if obj["id"] not in ids:
            continue
        sent = sims.sent.get((obj["id"], obj["completed_bytes"]))
        if sent is not None:
            ages.append(at - sent)
        if obj["id"] in first:
            times.setdefault(obj["id"], []).append(at)
    gaps = [b - a for ts in times.values() for a, b in itertools.pairwise(ts)]
    return {
        "post": t_post,
        "orders": t_orders,
        "sse": t_sse - t0,
        "age_p50": pct(ages, 0.5),
        "age_p99": pct(ages, 0.99),
        "age_max": max(ages),
        "gap_max": max(gaps),
        "relay_cpu": 100 * (cpu1 - cpu0) / (w1 - w0),
    }


async def bench(n: int, rounds: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="fleetd-fanout-") as tmp:
        coordinator = await start_coordinator(Path(tmp))
        url, pid = coordinator.url, coordinator.proc.pid
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            sims = SimAgents(n, session, url)
            runner = web.AppRunner(sims.app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            sims.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            events = Events()
            follower = asyncio.create_task(events.follow(session, url))
            beats: asyncio.Task[None] | None = None
            try:
                await sims.register()
                beats = asyncio.create_task(sims.heartbeats())
                await asyncio.sleep(1.0)  # let registrations settle
                results = [
                    await one_round(session, url, pid, sims, events, r) for r in range(rounds)
                ]
            finally:
                for t in [follower, beats, *sims.jobs]:
                    if t is not None:
                        t.cancel()
                await asyncio.gather(follower, *sims.jobs, return_exceptions=True)
                if beats is not None:
                    await asyncio.gather(beats, return_exceptions=True)
                await runner.cleanup()
        await coordinator.stop()
    return results


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="10,100", help="comma-separated fleet sizes")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.agents.split(",")]
    print(
        f"{'agents':>6} {'POST ms':>8} {'orders ms':>10} {'SSE all ms':>11} "
        f"{'age p50 ms':>11} {'age p99 ms':>11} {'age max ms':>11} {'max gap s':>10} "
        f"{'relay CPU %':>12}"
    )
    for n in sizes:
        rs = await bench(n, args.rounds)

        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        print(
            f"{n:>6} {med('post') * 1e3:>8.1f} {med('orders') * 1e3:>10.1f} "
            f"{med('sse') * 1e3:>11.1f} {med('age_p50') * 1e3:>11.1f} "
            f"{med('age_p99') * 1e3:>11.1f} {med('age_max') * 1e3:>11.1f} {med('gap_max'):>10.2f} "
            f"{med('relay_cpu'):>12.1f}"
        )
    print(
        f"(median of {args.rounds} rounds; goals for 100 agents: 'SSE all' and 'age max' under "
        "1000 ms, relay CPU under 50 % of one core)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main()))
