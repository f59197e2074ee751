"""Socket exhaustion (issue 18, item 2): half-open sockets and many streams against fleetd
started with the usual soft open-files limit (1024).

1. ``--half-open 1100`` sockets connect to the coordinator, send half a request header and
   hold; then one normal client asks ``/healthz``: how long until it is served?
2. ``--streams 600`` concurrent streaming chats through coordinator -> agent -> sim-ollama:
   statuses, and whether any agent was marked suspect.

Each runs twice: with the hard limit as the machine has it (fleetd raises its soft limit to
it at start), and with the hard limit also 1024 (nothing to raise to: shows what the header
timeout and ``coordinator_overloaded`` do when descriptors do run out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import Proc, spawn

MODEL = "qwen2.5:0.5b"
ADMIN_TOKEN = "bench-admin-token-0123456789"
ENV = {
    **os.environ,
    "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
    "FLEETD_AGENT_TOKEN": "bench-agent-token-0123456789",
    "PYTHONUNBUFFERED": "1",
}
SOFT = 1024


def limited(hard: int, *args: str) -> tuple[str, ...]:
    """``python -c`` that sets RLIMIT_NOFILE to (1024, hard) then runs ``python -m fleetd``."""
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({SOFT}, {hard})); "
        "sys.argv = ['fleetd', *sys.argv[1:]]; runpy.run_module('fleetd', run_name='__main__')"
    )
    return ("-c", code, *args)


async def start_fleet(work: Path, hard: int, keepalive: float) -> list[Proc]:
    sim = await spawn(
        "sim", *limited(hard, "sim-ollama", "--listen", "127.0.0.1:0", "--preinstall", MODEL,
        "--token-delay-ms", "5", "--num-chunks", "10", "--max-queue", "5000",
        "--size-scale", "0.0001"), env=ENV,
    )  # fmt: skip
    (work / "c.toml").write_text(
        f'[coordinator]\nsupported_models = ["{MODEL}"]\nkeepalive_timeout_s = {keepalive}\n'
    )
    coord = await spawn(
        "coordinator", *limited(hard, "--role", "coordinator", "--config", str(work / "c.toml"),
        "--listen", "127.0.0.1:0", "--data-dir", str(work / "c")), env=ENV,
        watch=re.compile("suspect"),
    )  # fmt: skip
    (work / "a.toml").write_text(
        f'[agent]\nregistry_url = "{sim.url}"\n[agent.gpu]\nprobe = "static"\n'
        '[[agent.gpu.devices]]\nname = "bench"\nmemory_bytes = 85899345920\n'
    )
    agent = await spawn(
        "agent", *limited(hard, "--role", "agent", "--config", str(work / "a.toml"),
        "--listen", "127.0.0.1:0", "--data-dir", str(work / "a"), "--coordinator", coord.url,
        "--ollama", sim.url), env=ENV,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            async with s.get(coord.url + "/api/agents", headers=headers) as r:
                agents = (await r.json())["agents"]
            if agents and not agents[0]["initializing"]:
                return [coord, agent, sim]
            await asyncio.sleep(0.1)
    sys.exit("the agent never became ready")


async def half_open(url: str, n: int) -> tuple[int, float, str]:
    """``n`` sockets with half a header, then the time a normal client waits for /healthz."""
    host, port = url.removeprefix("http://").split(":")
    held: list[asyncio.StreamWriter] = []
    refused = 0
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection(host, int(port))
        except OSError:
            refused += 1
            continue
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        held.append(w)
    await asyncio.sleep(1)  # the coordinator has accepted what it can
    started = time.monotonic()
    outcome, tries = "never served", 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        while time.monotonic() - started < 120:
            tries += 1
            try:
                async with s.get(url + "/healthz") as r:
                    outcome = f"HTTP {r.status} (try {tries})"
                    break
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.5)  # as a client retrying would
    waited = time.monotonic() - started
    for w in held:
        w.close()
    return refused, waited, outcome


async def streams(url: str, n: int) -> collections.Counter[str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    counts: collections.Counter[str] = collections.Counter()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:

        async def one() -> None:
            try:
                async with s.post(url + "/api/chat", json=body) as r:
                    data = await r.read()
                    if r.status == 200 and b'"error"' in data:
                        counts["200 with an error event"] += 1
                    elif r.status == 200:
                        counts["200"] += 1
                    else:
                        code = (await r.json(content_type=None)).get("code", "")
                        counts[f"{r.status} {code}"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                counts[type(e).__name__] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return counts


async def run(args: argparse.Namespace, hard: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="fleetd-bench-sockets-"))
    procs = await start_fleet(work, hard, args.keepalive)
    coord = procs[0]
    try:
        refused, waited, outcome = await half_open(coord.url, args.half_open)
        print(
            f"| {SOFT}:{hard} | {args.half_open} half-open sockets ({refused} refused) | "
            f"normal client {outcome} after {waited:.2f} s |"
        )
        started = time.monotonic()
        counts = await streams(coord.url, args.streams)
        took = time.monotonic() - started
        suspect = coord.matches
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        print(
            f"| {SOFT}:{hard} | {args.streams} concurrent streams in {took:.1f} s | "
            f"{summary}; agent marked suspect {suspect}x |"
        )
    finally:
        for p in procs:
            await p.stop()


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    # This process holds every half-open socket and stream itself.
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"keepalive_timeout_s = {args.keepalive} (also the header timeout)\n")
    print("| open files soft:hard | load | outcome |\n|---|---|---|")
    for h in sorted({hard, SOFT}, reverse=True):
        await run(args, h)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--half-open", type=int, default=1100)
    p.add_argument("--streams", type=int, default=600)
    p.add_argument("--keepalive", type=float, default=20.0)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
