"""What ``bench.agents`` measured, one ``Result`` per target, round and fleet size, and the
tables and verdict lines it prints."""

from __future__ import annotations

import os
import pstats
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    kind: str
    n: int
    cpu_pct: float
    loop_cpu_pct: float
    rss_mb: float
    list_ms: float
    offline: int | None
    load_cpu_pct: float
    hb_rate: float
    max_lag: float
    max_gap: float
    register_s: float
    sse_kb_s: float | None
    """Bytes per second one open dashboard receives on ``/api/events`` (fleetd only)."""
    rnd: int = 0
    """Which round measured it (``--rounds``)."""


def _median(results: list[Result], kind: str, n: int, attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if r.kind == kind and r.n == n]
    return statistics.median(values) if values else None


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def report(results: list[Result], ns: list[int], interval: float, timeout_s: float) -> None:
    def pair(n: int, attr: str, spec: str = ".1f") -> str:
        fleetd, bare = _median(results, "fleetd", n, attr), _median(results, "bare", n, attr)
        return f"{_fmt(fleetd, spec)} / {_fmt(bare, spec)}"

    print(
        "\n| agents | CPU ratio fleetd/bare (goal ≤ 1.5) | CPU % of a core, fleetd / bare "
        "| of which event-loop thread | RSS MB (goal ≤ 150 at 5k) "
        "| GET /api/agents ms (goal ≤ 200 at 5k) | misjudged offline (goal 0) "
        "| registration s | load gen CPU % "
        "| heartbeats/s (target) | max lag s | max gap s "
        "| /api/events KB/s per dashboard (goal ≤ 150 at 5k) |"
    )
    print("|" + "---|" * 13)
    for n in ns:
        f = _median(results, "fleetd", n, "cpu_pct")
        b = _median(results, "bare", n, "cpu_pct")
        ratio = f / b if f is not None and b else None
        offline = [r.offline for r in results if r.n == n and r.offline is not None]
        lags = [r.max_lag for r in results if r.n == n]
        gaps = [r.max_gap for r in results if r.n == n]
        print(
            f"| {n} | **{_fmt(ratio, '.2f')}×** | {pair(n, 'cpu_pct')} | {pair(n, 'loop_cpu_pct')} "
            f"| {pair(n, 'rss_mb', '.0f')} | {pair(n, 'list_ms', '.0f')} "
            f"| {max(offline) if offline else '—'} "
            f"| {pair(n, 'register_s')} | {pair(n, 'load_cpu_pct', '.0f')} "
            f"| {pair(n, 'hb_rate', '.0f')} ({n / interval:.0f}) "
            f"| {_fmt(max(lags) if lags else None, '.2f')} "
            f"| {_fmt(max(gaps) if gaps else None, '.1f')} "
            f"| {_fmt(_median(results, 'fleetd', n, 'sse_kb_s'), '.0f')} |"
        )
    print(
        "\nPairs read fleetd / bare (medians over rounds). CPU: the target's process tree, "
        "from /proc, over the window. Misjudged offline: agents fleetd logged or listed as "
        "offline although the load generator kept them heartbeating. Registration: all N "
        "agents registering at once. Max lag: how far the load generator fell behind its "
        "schedule; max gap: the longest silence of any simulated agent in the run (fleetd "
        f"marks an agent offline after {timeout_s:g} s)."
    )


def burst_ratios(results: list[Result], n: int) -> list[float]:
    """fleetd's registration burst time over the bare coordinator's, one per round."""
    by = {(r.kind, r.rnd): r.register_s for r in results if r.n == n}
    rounds = sorted({rnd for _, rnd in by})
    both = [i for i in rounds if ("fleetd", i) in by and ("bare", i) in by]
    return [by["fleetd", i] / by["bare", i] for i in both]


def report_bursts(results: list[Result], ns: list[int]) -> None:
    """The registration burst's verdict, in one line per fleet size."""
    print()
    for n in ns:
        ratios = burst_ratios(results, n)
        if not ratios:
            continue
        f = _median(results, "fleetd", n, "register_s")
        b = _median(results, "bare", n, "register_s")
        print(
            f"Registration burst, {n} agents at once: fleetd {_fmt(f, '.2f')} s, bare "
            f"{_fmt(b, '.2f')} s: **{statistics.median(ratios):.2f}×** (median; goal ≤ 3×); "
            f"rounds {', '.join(f'{x:.2f}×' for x in ratios)}"
        )
    load = os.getloadavg()
    print(f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def print_profile(path: Path) -> None:
    print(f"\ncProfile of fleetd written to {path}; top functions by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)
