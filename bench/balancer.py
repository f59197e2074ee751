"""Balancer pick cost from 100 to 10,000 candidates (goal: ≤ 50 µs at 1,000, O(1) or O(log N)).

Each built-in balancer (loaded through its entry point) holds N ready agents and runs a steady
state: pick an agent, count the request as started, end the oldest of ``--in-flight`` running
requests, and every ``--heartbeat-every`` picks refresh one agent's heartbeat figures. Reported:
the time of ``pick`` alone and of the whole cycle, then the same cycle through the coordinator's
gateway's pools (pool lookup, in-flight accounting), and the ratio of the largest N to the smallest.

    python -m bench.balancer [--sizes 100,1000,10000] [--picks 200000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from typing import cast

from fleetd.coordinator.inventory import Inventory
from fleetd.coordinator.metrics import Metrics
from fleetd.coordinator.pools import Pools
from fleetd.core.balancing import Balancer, Load
from fleetd.core.plugins import load_plugin
from fleetd.core.store import Store
from fleetd.core.wire import Agent

MODEL = "gpt-oss:20b"


def fill(pool: Balancer, n: int, rng: random.Random) -> list[str]:
    ids = [f"agent-{i:05d}" for i in range(n)]
    for agent_id in ids:
        pool.update(agent_id, Load(0, rng.randrange(4), rng.random(), rng.randrange(1 << 36)))
    return ids


def run_pool(name: str, n: int, picks: int, in_flight: int, hb_every: int) -> tuple[float, float]:
    """(µs per pick, µs per cycle) for a pool of ``n`` candidates."""
    rng = random.Random(n)
    pool: Balancer = load_plugin("fleetd.balancer", name, "coordinator.balancer")()
    ids = fill(pool, n, rng)
    running: deque[str] = deque()
    clock = time.perf_counter
    pick_s = 0.0
    started = clock()
    for i in range(picks):
        t0 = clock()
        agent_id = pool.pick()
        pick_s += clock() - t0
        assert agent_id is not None
        pool.started(agent_id)
        running.append(agent_id)
        if len(running) > in_flight:
            pool.finished(running.popleft())
        if i % hb_every == 0:
            pool.update(rng.choice(ids), Load(0, rng.randrange(4), rng.random(), 1 << 35))
    total = clock() - started
    return 1e6 * pick_s / picks, 1e6 * total / picks


def run_gateway(name: str, n: int, picks: int, in_flight: int) -> float:
    """µs per pick + start + end through the pools, as a request pays for it."""
    cls = load_plugin("fleetd.balancer", name, "coordinator.balancer")
    inventory = Inventory(cast(Store, None))  # in memory only: never flushed here
    gw = Pools([MODEL], {}, cls, Metrics(), inventory)
    for i in range(n):
        gw.agent_changed(Agent(id=f"agent-{i:05d}", name="a", url="http://x", initializing=False))
    running: deque[str] = deque()
    started = time.perf_counter()
    for _ in range(picks):
        agent_id = gw.pick(MODEL)
        assert agent_id is not None
        running.append(agent_id)
        if len(running) > in_flight:
            gw.end(running.popleft())
    return 1e6 * (time.perf_counter() - started) / picks


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.balancer", description=__doc__)
    p.add_argument("--sizes", default="100,1000,10000", help="candidate counts")
    p.add_argument("--picks", type=int, default=200_000, help="picks per figure")
    p.add_argument("--in-flight", type=int, default=64, help="requests running at once")
    p.add_argument("--heartbeat-every", type=int, default=10, help="picks per heartbeat")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'balancer':<13}{'N':>7}{'pick µs':>10}{'cycle µs':>10}{'gateway µs':>12}")
    for name in ("least-busy", "round-robin"):
        rows = []
        for n in sizes:
            pick_us, cycle_us = run_pool(name, n, args.picks, args.in_flight, args.heartbeat_every)
            gw_us = run_gateway(name, n, args.picks, args.in_flight)
            rows.append((pick_us, cycle_us, gw_us))
            print(f"{name:<13}{n:>7}{pick_us:>10.2f}{cycle_us:>10.2f}{gw_us:>12.2f}")
        first, last = rows[0], rows[-1]
        print(
            f"{'':<13}{sizes[-1]} vs {sizes[0]}: pick ×{last[0] / first[0]:.2f}, "
            f"cycle ×{last[1] / first[1]:.2f}, gateway ×{last[2] / first[2]:.2f}"
        )


if __name__ == "__main__":
    main()
