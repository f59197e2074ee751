"""One stuck SSE subscriber (connects to ``/api/events``, never reads) while agents heartbeat
with the largest fields the wire format allows, as fast as the coordinator answers: the
coordinator's peak RSS. Before issue 18 this grew by ~110 MB/s to 1.5 GB in 14 s.

    python -m bench.stuck_sse [--seconds 15] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench.proc_stats import tree_rss_mb
from bench.procs import spawn

ADMIN_TOKEN = "bench-admin-token"
AGENT_TOKEN = "bench-agent-token"
AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}
GPU = {"name": "Bench GPU", "memory_bytes": 85_899_345_920}


def stuck_subscriber(url: str) -> socket.socket:
    parts = urlsplit(url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((parts.hostname, parts.port))
    head = f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    s.sendall(head.encode())
    return s


async def main(seconds: float, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "coordinator.toml"
        config.write_text("[coordinator]\nheartbeat_timeout_s = 600\n")
        env = {
            **os.environ,
            "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
            "FLEETD_AGENT_TOKEN": AGENT_TOKEN,
            "PYTHONUNBUFFERED": "1",
        }
        args = ["-m", "fleetd", "--role", "coordinator", "--config", str(config)]
        coord = await spawn(
            "coordinator", *args, "--listen", "127.0.0.1:0", "--data-dir", tmp, env=env
        )
        sock = stuck_subscriber(coord.url)
        peak = 0.0
        sent = 0
        try:
            async with aiohttp.ClientSession(coord.url) as http:
                reg = {"name": "big", "url": "http://127.0.0.1:9", "gpus": [GPU]}
                async with http.post("/api/agents", json=reg, headers=AGENT) as r:
                    agent_id = (await r.json())["id"]
                loaded = [f"{i:03d}" + "m" * 500 for i in range(256)]
                deadline = time.monotonic() + seconds

                async def beat(worker: int) -> None:
                    nonlocal sent
                    while time.monotonic() < deadline:
                        hb = {
                            "initializing": True,
                            "ready_models": 0,
                            "total_models": 4,
                            "status_message": f"{worker}-{sent}" + "s" * 1000,
                            "loaded_models": loaded,
                        }
                        path = f"/api/agents/{agent_id}/heartbeat"
                        async with http.post(path, json=hb, headers=AGENT) as r:
                            r.raise_for_status()
                        sent += 1

                async def sample() -> None:
                    nonlocal peak
                    while time.monotonic() < deadline:
                        peak = max(peak, tree_rss_mb(coord.proc.pid))
                        await asyncio.sleep(0.2)

                await asyncio.gather(sample(), *(beat(i) for i in range(concurrency)))
        finally:
            sock.close()
            await coord.stop()
        dropped = sum("dropping an SSE subscriber" in line for line in coord.tail)
        print("| seconds | heartbeats | event size | subscriber dropped | peak RSS |")
        print("|---|---|---|---|---|")
        print(f"| {seconds:g} | {sent} | ~130 KB | {'yes' if dropped else 'no'} | {peak:.0f} MB |")
        print(
            f"one stuck SSE subscriber with large messages: peak RSS {peak:.0f} MB (goal < 300 MB)"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=8)
    a = p.parse_args()
    asyncio.run(main(a.seconds, a.concurrency))
