"""A/B of the proxy overhead of two fleetd source trees, in the same interleaved rounds.

On a shared machine two separate ``bench.proxy`` runs differ by more than a small change
costs; here both trees' fleets (coordinator + agent) sit in front of one ``fleetd sim-ollama``
and are measured alternately with ``direct`` (the sim itself), so the noise hits both alike.
Reported: each tree's p50 overhead over direct at concurrency 1, throughput at 16, and its
coordinator's CPU time per request at concurrency 1 (the steadiest figure on a busy machine:
latency moves with other processes' scheduling, CPU time much less), medians over rounds, and
B / A.

Each tree runs ``--fleets`` fleets (2 by default) and a round's figure for a tree is the mean
over them: two processes of the same code differ here by up to 25% in CPU per request for the
whole of their life (where they and their agent land on the cores, their memory layout), so
one fleet per tree can show such a difference as the change's. CPU time is read from
``/proc/PID/task/*/schedstat`` (nanoseconds; the clock ticks of ``/proc/PID/stat`` are 10 ms,
50 µs per request over 200 requests).

    python -m bench.proxy_ab --a /path/to/old/tree --b . [--rounds 9] [--fleets 2]
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
    """CPU seconds of process ``pid`` so far: its threads' schedstat run times (ns), or user +
    system clock ticks where the kernel has no schedstat."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except FileNotFoundError:
                pass  # a thread that just ended
        return total / 1e9
    except FileNotFoundError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fleet(tree: Path, tag: str, sim: str, work: Path, procs: list[Proc]) -> tuple[str, int]:
    coord, _ = await start_fleet(sim, work, procs, tag=tag, python=_from(tree))
    return coord.url, coord.proc.pid


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fleetd-ab-"))
    procs: list[Proc] = []
    med = statistics.median
    mean = statistics.fmean
    try:
        sim = await spawn(
            "sim", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0", "--latency-ms", "0",
            "--token-delay-ms", "0", "--size-scale", "0.0001", "--bandwidth", "0",
            "--preinstall", MODEL, env=ENV,
        )  # fmt: skip
        procs.append(sim)
        urls = {"direct": sim.url}
        pids = {"direct": sim.proc.pid}
        fleets: dict[str, list[str]] = {"direct": ["direct"], "A": [], "B": []}
        for i in range(args.fleets):
            for k, tree in (("A", args.a), ("B", args.b)):
                name = f"{k}{i + 1}"
                urls[name], pids[name] = await fleet(tree, name.lower(), sim.url, work, procs)
                fleets[k].append(name)
        cpu: dict[str, list[float]] = {k: [] for k in urls}
        p50: dict[str, list[float]] = {k: [] for k in urls}
        rps: dict[str, list[float]] = {k: [] for k in urls}
        data = body(False)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
            for i in range(args.rounds):
                pairs = [x for pair in zip(fleets["A"], fleets["B"], strict=True) for x in pair]
                order = ["direct", *(pairs if i % 2 == 0 else reversed(pairs))]
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

        def per_round(figures: dict[str, list[float]], k: str) -> list[float]:
            """Tree ``k``'s figure in each round: the mean over its fleets."""
            return [mean(figures[n][r] for n in fleets[k]) for r in range(args.rounds)]

        p50s = {k: per_round(p50, k) for k in fleets}
        over = {k: [p50s[k][r] - p50s["direct"][r] for r in range(args.rounds)] for k in "AB"}
        cpus = {k: per_round(cpu, k) for k in fleets}
        rpss = {k: per_round(rps, k) for k in fleets}
        print(f"\nmedians over {args.rounds} rounds ({args.fleets} fleet(s) per tree)")
        for k in ("direct", "A", "B"):
            extra = f", overhead {med(over[k]):.3f} ms" if k in over else ""
            print(
                f"  {k:<6} p50 {med(p50s[k]):.3f} ms{extra}, c16 {med(rpss[k]):.0f} req/s, "
                f"CPU per request at c1 {med(cpus[k]):.0f} µs"
            )
        for k in "AB":
            each = ", ".join(f"{n} {med(cpu[n]):.0f} µs" for n in fleets[k])
            print(f"  {k} coordinators' CPU per request, each: {each}")
        ratios = [b / a for a, b in zip(over["A"], over["B"], strict=True) if a > 0]
        print(f"  p50 overhead B / A: {med(over['B']) / med(over['A']):.3f}", end="")
        print(f" (per-round ratios' median {med(ratios):.3f})" if ratios else "")
        print(f"  c16 throughput B / A: {med(rpss['B']) / med(rpss['A']):.3f}")
        print(f"  coordinator CPU per request B / A: {med(cpus['B']) / med(cpus['A']):.3f}")
        print(f"  load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
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
    p.add_argument("--fleets", type=int, default=2, help="fleets per tree (default 2)")
    sys.exit(run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
