"""The dashboard in a real browser while a large fleet heartbeats.

A real coordinator and N simulated agents from ``bench.agents`` (real registration,
heartbeats every 5 s with realistic bodies); Debian's Chromium, driven by Playwright, opens
the agents page. Over ``--duration`` seconds it counts the frames the page painted and the
longest frame, then times switching to the Tasks view. Every heartbeat is an SSE event, so
this is the page's live-update load at fleet scale.

    python -m bench.dashboard [--agents 3000] [--duration 10]

Needs the test extra (Playwright) and /usr/bin/chromium, as the dashboard tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import async_playwright

from bench.agents import ADMIN_TOKEN, Load, SimAgent, start_target
from fleetd.core.server import run

CHROMIUM = "/usr/bin/chromium"
INTERVAL_S = 5.0
WORKERS = 50

FRAMES_JS = """(ms) => new Promise(done => {
  let frames = 0, worst = 0, last = performance.now();
  const end = last + ms;
  function frame(now) {
    frames++; worst = Math.max(worst, now - last); last = now;
    if (now < end) requestAnimationFrame(frame); else done({frames, worst});
  }
  requestAnimationFrame(frame);
})"""


async def measure(n: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        target = await start_target("fleetd", Path(tmp), None)
        try:
            connector = aiohttp.TCPConnector(limit=2 * WORKERS + 4)
            async with aiohttp.ClientSession(connector=connector) as session:
                agents = [SimAgent(i, i * INTERVAL_S / n, 8) for i in range(n)]
                load = Load(session, target.url, INTERVAL_S)
                t0 = asyncio.get_running_loop().time()
                shares = [agents[w::WORKERS] for w in range(WORKERS)]
                jobs = [asyncio.create_task(load.drive(share, t0)) for share in shares]
                try:
                    await asyncio.gather(*(load.register_all(share) for share in shares))
                    return await _browse(target.url, duration)
                finally:
                    for j in jobs:
                        j.cancel()
                    await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await target.stop()


async def _browse(url: str, duration: float) -> dict[str, Any]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/?token={ADMIN_TOKEN}")
            await page.wait_for_selector("tr[data-agent]", timeout=60_000)
            await asyncio.sleep(2)  # the first live events arrive
            figures: dict[str, Any] = await page.evaluate(FRAMES_JS, int(duration * 1000))
            started = time.perf_counter()
            await page.click("a[href='#/tasks']")
            await page.wait_for_selector("h1:has-text('Tasks')", timeout=60_000)
            figures["switch_ms"] = 1000 * (time.perf_counter() - started)
            return figures
        finally:
            await browser.close()


async def main_async(args: argparse.Namespace) -> int:
    print("| agents | frames/s | longest frame ms | switch to Tasks ms |\n|---|---|---|---|")
    for n in [int(x) for x in args.agents.split(",")]:
        f = await measure(n, args.duration)
        print(
            f"| {n} | {f['frames'] / args.duration:.0f} | {f['worst']:.0f} "
            f"| {f['switch_ms']:.0f} |",
            flush=True,
        )
    return 0


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.dashboard", description=__doc__.split("\n")[0] if __doc__ else None
    )
    p.add_argument("--agents", default="3000", help="comma-separated fleet sizes")
    p.add_argument("--duration", type=float, default=10.0, help="frame-counting window, s")
    sys.exit(run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
