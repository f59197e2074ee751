"""Inference proxy overhead: fleetd's coordinator + agent against the same run's baselines.

Targets, all in front of one ``fleetd sim-ollama`` with zero simulated latency:

- ``direct``: the simulator itself (measured first and last in each round);
- ``chain``: two minimal aiohttp pass-through hops in a row (``bench/chain.py``), the ceiling
  any two-hop Python proxy on aiohttp can reach here;
- ``agent``: fleetd's agent alone; ``fleetd``: coordinator + agent (``/v1``);
- ``fleetd-native`` and ``direct-native``: Ollama's ``/api/chat`` through fleetd and direct;
- ``litellm``: LiteLLM's proxy, one hop, when ``litellm`` is importable (else skipped).

For each: non-streaming chat latency at concurrency 1 (p50), throughput and p99 at 16 and 64
(each over a fixed window after a warm-up at that concurrency, so that every target is timed
as long, the slowest included), and streaming time to first chunk at concurrency 1. Targets
run in interleaved rounds and each figure is the median over rounds; overheads are taken
against the same round's direct.

    python -m bench.proxy [--rounds 5] [--requests 200] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec

from bench.procs import Proc, spawn
from fleetd.core.server import run

MODEL = "qwen2.5:0.5b"
ADMIN_TOKEN = "bench-admin-token"
ENV = {
    **os.environ,
    "FLEETD_ADMIN_TOKEN": ADMIN_TOKEN,
    "FLEETD_AGENT_TOKEN": "bench-agent-token",
    "PYTHONUNBUFFERED": "1",
}
LITELLM_KEY = "sk-bench"
JSON = {"Content-Type": "application/json", "Authorization": f"Bearer {LITELLM_KEY}"}
"""Every target gets the same headers; only LiteLLM checks the key (fleetd ignores it while
FLEETD_API_KEYS is empty)."""
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
V1 = "/v1/chat/completions"
NATIVE = "/api/chat"
CONCURRENCY = (16, 64)


def body(stream: bool) -> bytes:
    return msgspec.json.encode({"model": MODEL, "messages": MESSAGES, "stream": stream})


async def start_litellm(sim_url: str, work: Path) -> Proc | None:
    """LiteLLM's proxy in front of the sim's OpenAI API, when it is installed (the ``bench``
    extra, or any ``litellm`` executable named by ``$LITELLM``, e.g. in a separate venv)."""
    exe = os.environ.get("LITELLM") or shutil.which("litellm")
    if exe is None:
        return None
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {sim_url}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"
        "  callbacks: []\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    port = 40000 + os.getpid() % 20000
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--config",
        str(config),
        "--port",
        str(port),
        env={**ENV, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    p = Proc("litellm", proc)
    p.url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            try:
                async with s.get(p.url + "/health/liveliness") as r:
                    if r.status == 200:
                        return p
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    await p.stop()
    return None


async def wait_ready(coordinator: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            async with s.get(coordinator + "/api/agents", headers=headers) as r:
                agents = (await r.json())["agents"]
            if agents and not agents[0]["initializing"]:
                return
            await asyncio.sleep(0.1)
    sys.exit("the agent never became ready")


async def start_fleet(
    sim: str,
    work: Path,
    procs: list[Proc],
    *,
    tag: str = "",
    python: tuple[str, ...] = ("-m", "fleetd"),
    coordinator_extra: str = "",
) -> tuple[Proc, Proc]:
    """A coordinator and one agent in front of ``sim``, ready to serve ``MODEL``; both are
    added to ``procs`` (for the caller to stop). ``python`` runs fleetd from another tree."""
    suffix = f"-{tag}" if tag else ""
    (work / f"{tag}c.toml").write_text(
        f'[coordinator]\nsupported_models = ["{MODEL}"]\n{coordinator_extra}'
    )
    coord = await spawn(
        f"coordinator{suffix}", *python, "--role", "coordinator", "--config",
        str(work / f"{tag}c.toml"), "--listen", "127.0.0.1:0", "--data-dir", str(work / f"{tag}c"),
        env=ENV,
    )  # fmt: skip
    procs.append(coord)
    (work / f"{tag}a.toml").write_text(
        f'[agent]\nregistry_url = "{sim}"\n[agent.gpu]\nprobe = "static"\n'
        '[[agent.gpu.devices]]\nname = "bench"\nmemory_bytes = 85899345920\n'
    )
    agent = await spawn(
        f"agent{suffix}", *python, "--role", "agent", "--config", str(work / f"{tag}a.toml"),
        "--listen", "127.0.0.1:0", "--data-dir", str(work / f"{tag}a"),
        "--coordinator", coord.url, "--ollama", sim, env=ENV,
    )  # fmt: skip
    procs.append(agent)
    await wait_ready(coord.url)
    return coord, agent


# --- measurements ------------------------------------------------------------------------


async def one(session: aiohttp.ClientSession, url: str, data: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=data, headers=JSON) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return time.perf_counter() - started


async def first_chunk(session: aiohttp.ClientSession, url: str, data: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=data, headers=JSON) as r:
        await r.content.readany()
        elapsed = time.perf_counter() - started
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return elapsed


async def sequential(fn: Callable[[], Awaitable[float]], n: int) -> list[float]:
    return [await fn() for _ in range(n)]


async def concurrent(
    session: aiohttp.ClientSession, url: str, data: bytes, c: int, seconds: float
) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of ``c`` workers sending requests back to back
    for ``seconds``, after each has sent two untimed ones (connections opened on every hop)."""
    await asyncio.gather(*(sequential(lambda: one(session, url, data), 2) for _ in range(c)))
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await one(session, url, data))

    await asyncio.gather(*(worker() for _ in range(c)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, 1000 * latencies[int(0.99 * (len(latencies) - 1))]


@dataclass
class Target:
    name: str
    url: str
    path: str

    @property
    def endpoint(self) -> str:
        return self.url + self.path


Figures = dict[str, float]


async def measure(session: aiohttp.ClientSession, t: Target, n: int, seconds: float) -> Figures:
    plain, streamed = body(False), body(True)
    await sequential(lambda: one(session, t.endpoint, plain), 20)  # warm the connections
    lat = await sequential(lambda: one(session, t.endpoint, plain), n)
    ttfc = await sequential(lambda: first_chunk(session, t.endpoint, streamed), n // 2)
    out = {"p50": 1000 * statistics.median(lat), "ttfc": 1000 * statistics.median(ttfc)}
    for c in CONCURRENCY:
        rps, p99 = await concurrent(session, t.endpoint, plain, c, seconds)
        out[f"rps{c}"], out[f"p99_{c}"] = rps, p99
    return out


# --- report ------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(rounds: list[dict[str, Figures]], names: list[str], skipped: list[str]) -> None:
    overhead: dict[str, list[float]] = defaultdict(list)
    ttfc_over: dict[str, list[float]] = defaultdict(list)
    for r in rounds:
        for name in names:
            base = "direct-native" if name.endswith("native") else "direct"
            if name.startswith("direct"):
                continue
            overhead[name].append(r[name]["p50"] - r[base]["p50"])
            ttfc_over[name].append(r[name]["ttfc"] - r[base]["ttfc"])

    def fig(name: str, key: str) -> float:
        return med([r[name][key] for r in rounds])

    print(f"\nmedians over {len(rounds)} interleaved rounds (ms, requests/s)")
    head = f"{'target':<14}{'p50 c1':>8}{'overhead':>10}{'ttfc':>8}{'ttfc+':>8}"
    head += "".join(f"{'rps c' + str(c):>10}{'p99 c' + str(c):>10}" for c in CONCURRENCY)
    print(head)
    for name in names:
        row = f"{name:<14}{fig(name, 'p50'):>8.2f}"
        row += f"{med(overhead[name]):>10.2f}" if name in overhead else f"{'':>10}"
        row += f"{fig(name, 'ttfc'):>8.2f}"
        row += f"{med(ttfc_over[name]):>8.2f}" if name in ttfc_over else f"{'':>8}"
        for c in CONCURRENCY:
            row += f"{fig(name, f'rps{c}'):>10.0f}{fig(name, f'p99_{c}'):>10.1f}"
        print(row)
    chain = med(overhead["chain"])
    print("\nratios (fleetd = coordinator + agent, /v1):")
    print(f"  p50 overhead at c1, fleetd / chain:        {med(overhead['fleetd']) / chain:.2f}")
    print(f"  p50 overhead at c1, agent alone / chain:   {med(overhead['agent']) / chain:.2f}")
    ttfc = fig("fleetd", "ttfc") / fig("chain", "ttfc")
    print(
        f"  time to first chunk, fleetd / chain:       {ttfc:.2f}"
        f"  (overheads {med(ttfc_over['fleetd']):.2f} vs {med(ttfc_over['chain']):.2f} ms)"
    )
    for c in CONCURRENCY:
        ratio = fig("fleetd", f"rps{c}") / fig("chain", f"rps{c}")
        print(f"  throughput at c{c}, fleetd / chain:        {ratio:.2f}")
    if "litellm" in names:
        lite = med(overhead["litellm"])
        print(f"  p50 overhead at c1, fleetd / litellm:      {med(overhead['fleetd']) / lite:.2f}")
    native, v1 = med(overhead["fleetd-native"]), med(overhead["fleetd"])
    print(
        f"  native /api/chat overhead / /v1 overhead:  {native / v1:.2f}"
        f"  ({native:.2f} vs {v1:.2f} ms; absolute p50 {fig('fleetd-native', 'p50'):.2f}"
        f" vs {fig('fleetd', 'p50'):.2f} ms)"
    )
    for note in skipped:
        print(f"  note: {note}")


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fleetd-bench-"))
    procs: list[Proc] = []
    try:
        sim = await spawn(
            "sim", "-m", "fleetd", "sim-ollama", "--listen", "127.0.0.1:0", "--latency-ms", "0",
            "--token-delay-ms", "0", "--size-scale", "0.0001", "--bandwidth", "0",
            "--preinstall", MODEL, env=ENV,
        )  # fmt: skip
        procs.append(sim)
        hop2 = await spawn("chain2", "-m", "bench.chain", "--upstream", sim.url, env=ENV)
        hop1 = await spawn("chain1", "-m", "bench.chain", "--upstream", hop2.url, env=ENV)
        procs += [hop2, hop1]
        coord, agent = await start_fleet(sim.url, work, procs)
        targets = [
            Target("direct", sim.url, V1),
            Target("chain", hop1.url, V1),
            Target("agent", agent.url, V1),
            Target("fleetd", coord.url, V1),
            Target("direct-native", sim.url, NATIVE),
            Target("fleetd-native", coord.url, NATIVE),
        ]
        skipped: list[str] = []
        lite = await start_litellm(sim.url, work)
        if lite is None:
            skipped.append("LiteLLM is not installed (pip install 'fleetd[bench]'): skipped")
        else:
            procs.append(lite)
            targets.append(Target("litellm", lite.url, V1))
        rounds: list[dict[str, Figures]] = []
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(args.rounds):
                order = [targets[0], *targets[1:], targets[0]]
                got: dict[str, list[Figures]] = defaultdict(list)
                for t in order:
                    got[t.name].append(await measure(session, t, args.requests, args.seconds))
                    print(f"round {i + 1}/{args.rounds}: {t.name} done", flush=True)
                rounds.append(
                    {
                        name: {k: statistics.mean(f[k] for f in figs) for k in figs[0]}
                        for name, figs in got.items()
                    }
                )
        report(rounds, [t.name for t in targets], skipped)
    finally:
        for p in reversed(procs):
            await p.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported")
    p.add_argument("--requests", type=int, default=200, help="sequential requests per figure")
    p.add_argument(
        "--seconds", type=float, default=3.0, help="throughput window per concurrency level"
    )
    sys.exit(run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
