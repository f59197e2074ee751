"""What one window of ``bench.ha`` saw, and the table the run prints from its windows."""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.agents import HEARTBEAT_TIMEOUT_S

SLICE_S = 10.0
ENOUGH = 0.95
"""Share of the target heartbeat rate the generator must reach for the CPU ratios to count."""


@dataclass
class Window:
    """What one measured window saw: CPU % of a core per process tree, heartbeats/s per
    load and its target, and the generator's own CPU."""

    cpu: dict[str, float] = field(default_factory=dict)
    rate: dict[str, float] = field(default_factory=dict)
    target: dict[str, float] = field(default_factory=dict)
    generator_cpu: float = 0.0
    max_lag: float = 0.0
    max_queue: int = 0
    max_gap: float = 0.0
    skipped: int = 0
    non_200: list[str] = field(default_factory=list)
    offline: int = 0
    listed: dict[str, int] = field(default_factory=dict)
    checked: int = 0
    """Agents whose last accepted heartbeat was compared with what the coordinator lists."""
    mismatched: int = 0
    slices: dict[str, list[float]] = field(default_factory=dict)
    """CPU % per ``SLICE_S`` of the window, per process tree: a steady window varies little."""
    ages: list[float] = field(default_factory=list)

    @property
    def generator_us(self) -> float:
        """Generator CPU per heartbeat sent and answered, µs."""
        rate = sum(self.rate.values())
        return 1e4 * self.generator_cpu / rate if rate else float("nan")

    def short(self, name: str) -> bool:
        return self.rate[name] < ENOUGH * self.target[name]


def _median(windows: list[Window], get: Callable[[Window], float]) -> float:
    return statistics.median(get(w) for w in windows)


def _per(a: float, b: float) -> float:
    return a / b if b else float("nan")


def report(n: int, args: argparse.Namespace, bare: list[Window], pair: list[Window]) -> None:
    half, interval = n // 2, args.interval
    floor = _median(bare, lambda w: w.cpu["bare"])
    floor_rate = _median(bare, lambda w: w.rate["bare"])
    floor_per_hb = _median(bare, lambda w: _per(w.cpu["bare"], w.rate["bare"]))
    rows: list[tuple[str, str, str]] = [
        (
            f"bare coordinator, {half} agents (floor)",
            f"{floor:.1f} % of a core at {floor_rate:.0f} heartbeats/s "
            f"(target {half / interval:.0f})",
            "",
        )
    ]
    for c in "AB":
        cpu = _median(pair, lambda w, c=c: w.cpu[c])
        rate = _median(pair, lambda w, c=c: w.rate[c])
        target = pair[0].target[c]
        per_hb = _per(_median(pair, lambda w, c=c: _per(w.cpu[c], w.rate[c])), floor_per_hb)
        rows += [
            (
                f"coordinator {c}",
                f"{cpu:.1f} % at {rate:.0f} heartbeats/s (target {target:.0f})",
                "",
            ),
            (f"{c} CPU / floor", f"**{_per(cpu, floor):.2f}×**", "≤ 1.5×"),
            (f"{c} CPU per heartbeat / floor's", f"{per_hb:.2f}×", "≤ 1.5×"),
        ]
    ages = [a for w in pair for a in w.ages]
    rows += [
        (
            "PostgreSQL (postmaster + backends)",
            f"{_median(pair, lambda w: w.cpu['PostgreSQL']):.1f} %",
            "reported",
        ),
        (
            "agents misjudged offline (A and B: logged + listed)",
            str(max(w.offline for w in pair)),
            "0",
        ),
        (
            "agents listed by A / B",
            " / ".join(str(min(w.listed[c] for w in pair)) for c in "AB"),
            f"{n} / {n}",
        ),
        (
            "progress reported to A, age on B's /api/events: median / max",
            f"{statistics.median(ages):.3f} / {max(ages):.3f} s ({len(ages)} reports, "
            f"{sum(a > 1 for a in ages)} older than 1 s)"
            if ages
            else "none seen",
            "≤ 1 s",
        ),
        (
            "load generator CPU, bare / pair window",
            f"{_median(bare, lambda w: w.generator_cpu):.1f} % / "
            f"{_median(pair, lambda w: w.generator_cpu):.1f} % "
            f"({_median(bare, lambda w: w.generator_us):.0f} / "
            f"{_median(pair, lambda w: w.generator_us):.0f} µs per heartbeat)",
            "",
        ),
        (
            "load generator: worst lag behind schedule, queue, skipped slots",
            f"{max(w.max_lag for w in bare + pair):.3f} s, "
            f"{max(w.max_queue for w in bare + pair)}, {sum(w.skipped for w in bare + pair)}",
            "",
        ),
        (
            "longest silence of any agent",
            f"{max(w.max_gap for w in bare + pair):.1f} s",
            f"< {HEARTBEAT_TIMEOUT_S:g} s",
        ),
        (
            "agents whose listed figures match their last accepted heartbeat",
            " / ".join(f"{w.checked - w.mismatched} of {w.checked}" for w in bare + pair),
            "all",
        ),
        ("replies other than 200", "; ".join(x for w in bare + pair for x in w.non_200), "none"),
    ]
    print(
        f"\n{n} agents, 1 heartbeat / {interval:g} s, {n // 2} to A and {n - n // 2} to B; "
        f"{args.duration:g} s windows, {len(pair)} round(s), medians; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print("| figure | value | goal |\n|---|---|---|")
    for name, value, goal in rows:
        print(f"| {name} | {value} | {goal} |")
    short = [
        f"{k} {w.rate[k]:.0f}/{w.target[k]:.0f}" for w in bare + pair for k in w.rate if w.short(k)
    ]
    if short:
        print(
            f"\nWARNING: the generator reached less than {ENOUGH:.0%} of the target rate "
            f"({', '.join(short)}): the host is saturated, read the per-heartbeat figures."
        )


def round_line(kind: str, w: Window) -> str:
    cpu = ", ".join(
        f"{k} {v:.1f} % ({min(w.slices.get(k, [v])):.0f}–{max(w.slices.get(k, [v])):.0f} "
        f"per {SLICE_S:g} s)"
        for k, v in w.cpu.items()
    )
    rates = ", ".join(f"{k} {w.rate[k]:.0f}/{w.target[k]:.0f}" for k in w.rate)
    return (
        f"  {kind}: CPU {cpu}; heartbeats/s {rates}; generator {w.generator_cpu:.1f} % "
        f"({w.generator_us:.0f} µs/heartbeat); lag {w.max_lag:.3f} s"
    )
