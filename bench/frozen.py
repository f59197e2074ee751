"""How long a request waits on a frozen agent before another agent answers it.

Two sims, a coordinator (round-robin, ``heartbeat_timeout_s`` 20) and two agents heartbeating
every ``--interval`` seconds. Each round freezes the first agent (SIGSTOP) at a random point
of its heartbeat cycle, sends two requests at once (round-robin puts one on the frozen
agent), and times the slower answer; then thaws the agent and lets it heartbeat again.
Judged by: every answer within about 3 heartbeat intervals (issue 24 item 8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import Proc, spawn
from bench.proxy import ADMIN_TOKEN, ENV, MESSAGES, MODEL, V1


async def ready(coord: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            async with s.get(coord + "/api/agents", headers=headers) as r:
                agents = (await r.json())["agents"]
            if sum(1 for a in agents if not a["initializing"]) >= n:
                return
            await asyncio.sleep(0.1)
    sys.exit("the agents never became ready")


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fleetd-bench-"))
    procs: list[Proc] = []
    try:
        (work / "c.toml").write_text(
            f'[coordinator]\nsupported_models = ["{MODEL}"]\nbalancer = "round-robin"\n'
            "heartbeat_timeout_s = 20\nqueue_timeout_s = 60\n"
        )
        coord = await spawn(
            "coordinator", "-m", "fleetd", "--role", "coordinator", "--config",
            str(work / "c.toml"), "--listen", "127.0.0.1:0", "--data-dir", str(work / "c"),
            env=ENV,
        )  # fmt: skip
        procs.append(coord)
        agents: list[Proc] = []
        for i in range(2):
            sim = await spawn(
                f"sim{i}", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0",
                "--token-delay-ms", "0", "--size-scale", "0.0001", "--preinstall", MODEL, env=ENV,
            )  # fmt: skip
            procs.append(sim)
            (work / f"a{i}.toml").write_text(
                f'[agent]\nname = "gpu-{i}"\nregistry_url = "{sim.url}"\n'
                f"heartbeat_interval_s = {args.interval}\n"
                '[agent.gpu]\nprobe = "static"\n'
                '[[agent.gpu.devices]]\nname = "bench"\nmemory_bytes = 85899345920\n'
            )
            agent = await spawn(
                f"agent{i}", "-m", "fleetd", "--role", "agent", "--config",
                str(work / f"a{i}.toml"), "--listen", "127.0.0.1:0", "--data-dir",
                str(work / f"a{i}"), "--coordinator", coord.url, "--ollama", sim.url, env=ENV,
            )  # fmt: skip
            procs.append(agent)
            agents.append(agent)
        await ready(coord.url, 2)
        data = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
        waits: list[float] = []
        async with aiohttp.ClientSession() as s:

            async def ask() -> float:
                started = time.monotonic()
                async with s.post(coord.url + V1, data=data) as r:
                    await r.read()
                    assert r.status == 200, r.status
                return time.monotonic() - started

            for n in range(args.rounds):
                await asyncio.sleep(random.uniform(0, args.interval))
                agents[0].proc.send_signal(signal.SIGSTOP)
                try:
                    worst = max(await asyncio.gather(ask(), ask()))
                finally:
                    agents[0].proc.send_signal(signal.SIGCONT)
                waits.append(worst)
                print(f"round {n + 1}: answered after {worst:.2f}s", flush=True)
                await asyncio.sleep(args.interval * 1.5)  # heard from again: a candidate
        interval = args.interval
        print(f"\nheartbeat interval {interval:g}s, heartbeat_timeout_s 20, {len(waits)} rounds")
        print(f"longest wait {max(waits):.2f}s = {max(waits) / interval:.2f} intervals")
        print(f"median wait  {sorted(waits)[len(waits) // 2]:.2f}s")
        print("goal: within about 3 intervals:", "met" if max(waits) <= 3 * interval else "MISSED")
        return 0
    finally:
        for p in reversed(procs):
            await p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=5.0, help="agents' heartbeat_interval_s")
    parser.add_argument("--rounds", type=int, default=5)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
