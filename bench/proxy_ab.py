"""A/B of the proxy overhead of two fleetd source trees, in the same interleaved rounds.

On a shared machine two separate ``bench.proxy`` runs differ by more than a small change
costs; here both fleets (coordinator + agent of tree A, the same of tree B) sit in front of
one ``fleetd sim-ollama`` and are measured alternately with ``direct`` (the sim itself), so
the noise hits both alike. Reported: each tree's p50 overhead over direct at concurrency 1,
throughput at 16, and its coordinator's CPU time per request at concurrency 1 (the steadiest
figure on a busy machine: latency moves with other processes' scheduling, CPU time much
less), medians over rounds, and B / A.

    python -m bench.proxy_ab --a /path/to/old/tree --b . [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path

import aiohttp

from bench.procs import Proc, spawn
from bench.proxy import ENV, MODEL, V1, body, concurrent, one, sequential, start_fleet
from fleetd.core.server import run


def _from(tree: Path) -> tuple[str, ...]:
    """``python`` arguments running ``python -m fleetd`` from ``tree`` (whatever the cwd)."""
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(tree)!r}); "
        "runpy.run_module('fleetd', run_name='__main__', alter_sys=True)"
    )
    return ("-c", code)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fleet(tree: Path, tag: str, sim: str, work: Path, procs: list[Proc]) -> tuple[str, int]:
    coord, _ = await start_fleet(sim, work, procs, tag=tag, python=_from(tree))
    return coord.url, coord.proc.pid


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fleetd-ab-"))
    procs: list[Proc] = []
    try:
        sim = await spawn(
            "sim", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0", "--latency-ms", "0",
            "--token-delay-ms", "0", "--size-scale", "0.0001", "--bandwidth", "0",
            "--preinstall", MODEL, env=ENV,
        )  # fmt: skip
        procs.append(sim)
        a_url, a_pid = await fleet(args.a, "a", sim.url, work, procs)
        b_url, b_pid = await fleet(args.b, "b", sim.url, work, procs)
        urls = {"direct": sim.url, "A": a_url, "B": b_url}
        pids = {"direct": sim.proc.pid, "A": a_pid, "B": b_pid}
        cpu: dict[str, list[float]] = {k: [] for k in urls}
        p50: dict[str, list[float]] = {k: [] for k in urls}
        rps: dict[str, list[float]] = {k: [] for k in urls}
        data = body(False)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
            for i in range(args.rounds):
                order = ["direct", "A", "B"] if i % 2 == 0 else ["direct", "B", "A"]
                for name in order:
                    url = urls[name] + V1

                    def req(url: str = url) -> Awaitable[float]:
                        return one(s, url, data)

                    await sequential(req, 20)
                    before = cpu_s(pids[name])
                    lat = await sequential(req, args.requests)
                    cpu[name].append(1e6 * (cpu_s(pids[name]) - before) / args.requests)
                    p50[name].append(1000 * statistics.median(lat))
                    rps[name].append((await concurrent(s, url, data, 16, args.seconds))[0])
                print(f"round {i + 1}/{args.rounds} done", flush=True)
        over = {k: [p50[k][r] - p50["direct"][r] for r in range(args.rounds)] for k in ("A", "B")}
        med = statistics.median
        print(f"\nmedians over {args.rounds} rounds")
        for k in ("direct", "A", "B"):
            extra = f", overhead {med(over[k]):.3f} ms" if k in over else ""
            print(
                f"  {k:<6} p50 {med(p50[k]):.3f} ms{extra}, c16 {med(rps[k]):.0f} req/s, "
                f"CPU per request at c1 {med(cpu[k]):.0f} µs"
            )
        ratios = [b / a for a, b in zip(over["A"], over["B"], strict=True) if a > 0]
        print(f"  p50 overhead B / A: {med(over['B']) / med(over['A']):.3f}", end="")
        print(f" (per-round ratios' median {med(ratios):.3f})" if ratios else "")
        print(f"  c16 throughput B / A: {med(rps['B']) / med(rps['A']):.3f}")
        print(f"  coordinator CPU per request B / A: {med(cpu['B']) / med(cpu['A']):.3f}")
    finally:
        for p in reversed(procs):
            await p.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _tree(value: str) -> Path:
    return Path(value).resolve()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proxy_ab", description=__doc__)
    p.add_argument("--a", required=True, type=_tree, help="source tree A (holds fleetd/)")
    p.add_argument("--b", required=True, type=_tree, help="source tree B")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--seconds", type=float, default=2.0)
    sys.exit(run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
