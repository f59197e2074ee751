"""The registry mirror: what N agents pulling one model cost upstream, how long they take
against one agent, and the coordinator's CPU and RSS while it serves them.

Targets: a sim-ollama as the upstream registry (real blobs, its CDN paced at ``--upstream``
bytes/s, "slower than the LAN") and a coordinator with ``[coordinator.mirror]`` on, its
``registry_url`` that sim. A simulated agent is what a stock Ollama does when it pulls
``<coordinator>/library/<model>:<tag>`` (ollama.md, How Ollama downloads): the manifest, then
per blob a HEAD, the Location probe (headers only) and its parts with Range, 16 at a time, part
size size/16 clamped to Ollama's 100 MB-1 GB scaled like the model. Clients count bytes
(one of them checks every blob's sha256); they run in this process on the loopback (the LAN).

Judged by (benchmarks.md): upstream bytes for 10 and 100 agents <= 1.05x the model's bytes;
10 agents have the model in <= 1.2x the time one agent takes (each round starts with an
empty cache); coordinator CPU and RSS while serving 10 agents (RSS flat: no buffering).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.proc_stats import tree_cpu_s, tree_rss_mb
from bench.procs import Proc, spawn

MODEL = ("library/gpt-oss", "20b")
FULL_SIZE = 13_793_441_244
ADMIN = "bench-admin-token"


async def start(tmp: Path, upstream_bps: float, scale: float, cap: int) -> tuple[Proc, Proc]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLEETD_ADMIN_TOKEN": ADMIN}
    env["FLEETD_AGENT_TOKEN"] = "bench-agent-token"
    up = await spawn(
        "upstream", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0",
        "--size-scale", str(scale), "--bandwidth", "0", env=env,
    )  # fmt: skip
    async with aiohttp.ClientSession() as s:
        await (await s.post(up.url + "/_sim/registry", json={"bandwidth_bps": upstream_bps})).read()
    config = tmp / "coordinator.toml"
    config.write_text(
        f'[coordinator]\nregistry_url = "{up.url}"\n'
        f"[coordinator.mirror]\nupstream_bandwidth_bps = {cap}\n"
    )
    c = await spawn(
        "coordinator", "-m", "fleetd", "--role", "coordinator", "--config", str(config),
        "--listen", "127.0.0.1:0", "--data-dir", str(tmp / "data"), env=env,
    )  # fmt: skip
    return up, c


async def served(s: aiohttp.ClientSession, up: Proc) -> int:
    async with s.get(up.url + "/_sim/registry") as r:
        return int((await r.json())["served_bytes"])


async def one_agent(
    s: aiohttp.ClientSession, base: str, part_min: int, part_max: int, check: bool
) -> int:
    """Pull the model as Ollama does; returns the bytes received."""
    repo, tag = MODEL
    async with s.get(f"{base}/v2/{repo}/manifests/{tag}") as r:
        manifest = await r.json(content_type=None)
    got = 0
    for blob in [*manifest["layers"], manifest["config"]]:
        url = f"{base}/v2/{repo}/blobs/{blob['digest']}"
        async with s.head(url) as r:
            size = int(r.headers["Content-Length"])
        async with s.get(url) as r:  # the Location probe: headers only, then close
            direct = r.headers["Location"]
            r.close()
        part = max(1, min(max(size // 16, part_min), part_max))
        spans = [(a, min(a + part, size)) for a in range(0, size, part)]
        buf = bytearray(size) if check else None
        sem = asyncio.Semaphore(16)

        async def fetch(
            a: int, b: int, buf: bytearray | None, sem: asyncio.Semaphore, direct: str
        ) -> int:
            async with sem, s.get(direct, headers={"Range": f"bytes={a}-{b - 1}"}) as r:
                n = 0
                async for chunk in r.content.iter_chunked(1 << 20):
                    if buf is not None:
                        buf[a + n : a + n + len(chunk)] = chunk
                    n += len(chunk)
                return n

        got += sum(await asyncio.gather(*(fetch(a, b, buf, sem, direct) for a, b in spans)))
        if buf is not None and "sha256:" + hashlib.sha256(buf).hexdigest() != blob["digest"]:
            sys.exit(f"blob {blob['digest']} arrived corrupt")
    return got


async def round_(
    n: int, upstream_bps: float, scale: float, sample: bool, cap: int = 0
) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    up, c = await start(tmp, upstream_bps, scale, cap)
    part_min, part_max = max(1, int(100e6 * scale)), max(1, int(1e9 * scale))
    pid = c.proc.pid
    conn = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=conn) as s:
            await asyncio.sleep(0.5)
            rss0 = tree_rss_mb(pid)
            cpu0, t0 = tree_cpu_s(pid), time.monotonic()
            rss_peak = rss0
            pulls = asyncio.gather(
                *(one_agent(s, c.url, part_min, part_max, i == 0) for i in range(n))
            )
            while not pulls.done():
                await asyncio.wait({pulls}, timeout=0.2)
                if sample:
                    rss_peak = max(rss_peak, tree_rss_mb(pid))
            got = pulls.result()
            wall = time.monotonic() - t0
            cpu = tree_cpu_s(pid) - cpu0
            upstream = await served(s, up)
            async with s.get(
                c.url + "/api/mirror", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as r:
                state = await r.json()
        model = state["models"][0]["bytes"]
        assert all(g == model for g in got), "an agent got a wrong byte count"
        return {
            "agents": n,
            "model_mb": model / 1e6,
            "upstream_ratio": upstream / model,
            "seconds": wall,
            "cpu_s": cpu,
            "cpu_pct": 100 * cpu / wall,
            "rss0_mb": rss0,
            "rss_peak_mb": rss_peak,
            "served_gb": state["served_bytes"] / 1e9,
        }
    finally:
        await c.stop()
        await up.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['agents']:>6} {r['model_mb']:>8.1f} {r['upstream_ratio']:>9.3f} {r['seconds']:>8.2f}"
        f" {r['cpu_pct']:>6.0f} {r['rss0_mb']:>7.1f} {r['rss_peak_mb']:>8.1f}"
    )


async def main(args: argparse.Namespace) -> None:
    scale = args.model_mb * 1e6 / FULL_SIZE
    print(
        f"model gpt-oss:20b scaled to {args.model_mb:g} MB; upstream {args.upstream / 1e6:g} MB/s"
    )
    print(f"{'agents':>6} {'model MB':>8} {'up ratio':>9} {'seconds':>8} {'CPU %':>6} "
          f"{'RSS0 MB':>7} {'RSS max':>8}")  # fmt: skip
    rows = {}
    for n in [1, *args.agents]:
        rows[n] = await round_(n, args.upstream, scale, sample=True)
        print(_row(rows[n]), flush=True)
    worst = max(r["upstream_ratio"] for n, r in rows.items() if n > 1)
    print(f"\nupstream bytes / model bytes, worst of {args.agents}: {worst:.3f} (goal <= 1.05)")
    if 10 in rows:
        ratio = rows[10]["seconds"] / rows[1]["seconds"]
        print(f"time of 10 agents / time of 1 agent: {ratio:.2f} (goal <= 1.2)")
        r = rows[10]
        print(
            f"coordinator serving 10 agents: {r['cpu_pct']:.0f} % of a core, RSS "
            f"{r['rss0_mb']:.0f} MB before, {r['rss_peak_mb']:.0f} MB at most"
        )
    if args.cap:
        r = await round_(1, 0, scale, sample=False, cap=args.cap)
        rate = r["model_mb"] * 1e6 / r["seconds"]
        print(
            f"upstream_bandwidth_bps = {args.cap:g}, upstream unthrottled: 1 agent got the model "
            f"at {rate / 1e6:.1f} MB/s ({rate / args.cap:.2f}x the cap)"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=lambda v: [int(x) for x in v.split(",")], default=[10, 100])
    p.add_argument("--model-mb", type=float, default=50.0, help="model size after scaling")
    p.add_argument("--upstream", type=float, default=20e6, help="upstream bytes/s")
    p.add_argument("--cap", type=int, default=0, help="also measure upstream_bandwidth_bps")
    asyncio.run(main(p.parse_args()))
