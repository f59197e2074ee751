"""Instructions the coordinator executes per forwarded request, under callgrind: a cost that
does not move with the machine's load, for changes smaller than its noise.

On this shared 2-core machine the CPU time per request of two processes running the same
code differs by up to 25% for their whole life (``bench.proxy_ab`` runs two fleets per
tree for that reason); instruction counts repeat within about 1%. Each tree's coordinator
runs under ``valgrind --tool=callgrind`` (its agent and the sim run normally): after a
warm-up its counters are zeroed, ``--requests`` non-streaming chat requests are sent one at
a time, and the counters are dumped; then the same for ``--idle`` seconds without requests,
and that rate times the loaded time is subtracted (the background loops run ~50× slower
under valgrind, so they would weigh 50× more per request than in real life).

    python -m bench.proxy_cg /path/to/old/tree . [--requests 500]

Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import LISTENING_RE, ROOT, Proc, spawn
from bench.proxy import ENV, MODEL, V1, body, one, sequential, wait_ready
from bench.proxy_ab import _from
from fleetd.core.server import run


async def _spawn_callgrind(out: str, *args: str) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no",
        sys.executable, *args, cwd=ROOT, env=ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    p = Proc("coordinator", proc)
    assert proc.stdout is not None
    while not p.url:
        raw = await asyncio.wait_for(proc.stdout.readline(), 600)
        if not raw:
            sys.exit("the coordinator under callgrind did not start:\n" + "\n".join(p.tail))
        if m := LISTENING_RE.search(p._line(raw)):
            p.url = m.group(1)
    p.reader = asyncio.create_task(p._drain())
    return p


def _instructions(pid: int, out: str, label: str) -> int:
    """Dump the counters of callgrind process ``pid`` and read the total from the dump."""
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, capture_output=True)
    newest = max(glob.glob(out + ".*"), key=os.path.getmtime)
    with open(newest) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {newest}")


def _zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)


async def measure(tree: Path, tag: str, sim: str, work: Path, args: argparse.Namespace) -> float:
    (work / f"{tag}c.toml").write_text(f'[coordinator]\nsupported_models = ["{MODEL}"]\n')
    out = str(work / f"callgrind.{tag}")
    coord = await _spawn_callgrind(
        out, *_from(tree), "--role", "coordinator", "--config", str(work / f"{tag}c.toml"),
        "--listen", "127.0.0.1:0", "--data-dir", str(work / f"{tag}c"),
    )  # fmt: skip
    (work / f"{tag}a.toml").write_text(
        f'[agent]\nregistry_url = "{sim}"\n[agent.gpu]\nprobe = "static"\n'
        '[[agent.gpu.devices]]\nname = "bench"\nmemory_bytes = 85899345920\n'
    )
    agent = await spawn(
        f"agent-{tag}", *_from(tree), "--role", "agent", "--config", str(work / f"{tag}a.toml"),
        "--listen", "127.0.0.1:0", "--data-dir", str(work / f"{tag}a"),
        "--coordinator", coord.url, "--ollama", sim, env=ENV,
    )  # fmt: skip
    try:
        await wait_ready(coord.url)
        data = body(False)
        pid = coord.proc.pid
        async with aiohttp.ClientSession() as s:
            url = coord.url + V1
            await sequential(lambda: one(s, url, data), 30)
            _zero(pid)
            started = time.perf_counter()
            await sequential(lambda: one(s, url, data), args.requests)
            loaded = time.perf_counter() - started
            total = _instructions(pid, out, "loaded")
        _zero(pid)
        started = time.perf_counter()
        await asyncio.sleep(args.idle)
        idle_rate = _instructions(pid, out, "idle") / (time.perf_counter() - started)
        per_request = (total - idle_rate * loaded) / args.requests
        print(
            f"{tree}: {per_request / 1000:.1f}k instructions per request "
            f"({total / args.requests / 1000:.1f}k before subtracting {idle_rate / 1000:.0f}k/s "
            f"of idle background over {loaded:.1f} s)",
            flush=True,
        )
        return float(per_request)
    finally:
        await agent.stop()
        await coord.stop()


async def main_async(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    work = Path(tempfile.mkdtemp(prefix="fleetd-cg-"))
    sim: Proc | None = None
    try:
        sim = await spawn(
            "sim", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0", "--latency-ms", "0",
            "--token-delay-ms", "0", "--size-scale", "0.0001", "--bandwidth", "0",
            "--preinstall", MODEL, env=ENV,
        )  # fmt: skip
        counts = [
            await measure(tree, f"t{i}", sim.url, work, args) for i, tree in enumerate(args.trees)
        ]
        for tree, n in zip(args.trees[1:], counts[1:], strict=True):
            print(f"{tree} / {args.trees[0]}: {n / counts[0]:.3f}")
    finally:
        if sim is not None:
            await sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proxy_cg", description=__doc__)
    p.add_argument("trees", nargs="+", type=lambda v: Path(v).resolve(), help="source trees")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle background measured")
    sys.exit(run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
