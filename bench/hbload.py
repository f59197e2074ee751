"""A cheap heartbeat load generator: thousands of simulated agents from one process.

``bench.agents``' generator spends a coroutine, an aiohttp request and a JSON encoding per
heartbeat; on 2 cores shared with two coordinators and PostgreSQL it reached 288 of the
1,000 heartbeats/s that 5,000 agents need. This one spends a few microseconds:

- the heartbeat bodies are ``fleetd.core.wire.Heartbeat`` structs (the type
  ``fleetd/agent/link.py`` encodes) with GPU, CPU and load figures drawn at random, encoded
  once into a pool of ``BODIES``; agent ``i``'s ``k``-th heartbeat sends body ``(i + k) %
  BODIES``, so every heartbeat carries other figures than the agent's previous one;
- each agent's request head (its path, the agent token, the headers aiohttp sends for a real
  agent) is encoded once at registration, and a heartbeat is ``head + body``;
- keep-alive connections (``asyncio.Protocol``, one request in flight on each, as an
  HTTP/1.1 client does without pipelining), by default one per agent as a real fleet holds,
  or fewer (``conns``) shared by all agents: a heartbeat names its agent in the path, so the
  coordinator does not care which connection brings it;
- a reply is read as its status line and ``Content-Length`` bytes, nothing decoded.

Registration goes through aiohttp with the ``Registration`` struct (it is not timed), and an
agent heartbeats from its registration on. Every status is counted: 200 as a heartbeat, 404
re-registers (as a real agent does), anything else is kept with the start of its body.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, deque
from collections.abc import Coroutine
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.http import SERVER_SOFTWARE

from fleetd.core.gpu import Gpu
from fleetd.core.wire import Heartbeat, InstalledModel, Registration

BODIES = 64
GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_MEMORY = 85_899_345_920
MODELS = ["gpt-oss:20b", "gpt-oss:120b", "gpt-oss-safeguard:20b", "qwen3-coder:30b"]
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)


class _Reply(msgspec.Struct):
    id: str


def heartbeat_bodies(gpus: int, count: int = BODIES, seed: int = 12) -> list[bytes]:
    """``count`` heartbeats of a ready agent with ``gpus`` GPUs, as ``Link.heartbeat_once``
    builds and encodes them, each with its own figures."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        hb = Heartbeat(
            initializing=False,
            ready_models=len(MODELS),
            total_models=len(MODELS),
            requests_in_flight=rng.randrange(8),
            gpus=[
                Gpu(
                    name=GPU_NAME,
                    memory_bytes=GPU_MEMORY,
                    memory_used_bytes=rng.randrange(GPU_MEMORY // 2, GPU_MEMORY),
                    utilization=round(rng.random(), 2),
                )
                for _ in range(gpus)
            ],
            cpu_percent=round(rng.uniform(2, 60), 1),
            memory_percent=round(rng.uniform(20, 40), 1),
            status_message="",
            loaded_models=sorted(MODELS[:1]),
        )
        out.append(msgspec.json.encode(hb))
    return out


def registration(index: int, gpus: int, interval: float) -> bytes:
    """What ``Link.register`` sends for simulated agent ``index``."""
    reg = Registration(
        name=f"sim-{index}",
        url=f"http://127.0.0.1:9/sim/{index}",
        gpus=[Gpu(name=GPU_NAME, memory_bytes=GPU_MEMORY) for _ in range(gpus)],
        instance_id=uuid.uuid4().hex,
        version="bench",
        ollama_versions=["0.12.6"],
        models=[
            InstalledModel(name=m, size=13_000_000_000, digest=f"sha256:{i:064x}")
            for i, m in enumerate(MODELS)
        ],
        heartbeat_interval_s=interval,
    )
    return msgspec.json.encode(reg)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one heartbeat in flight at a time."""

    def __init__(self, load: HeartbeatLoad) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        """Bytes of the reply in flight (head + body) once its head is read, else -1."""
        self.status = 0
        self.agent = -1
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set_result(None)

    def send(self, agent: int, data: bytes) -> None:
        assert self.transport is not None
        self.agent = agent
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self.load.fail(self, f"reply without Content-Length: {head[:300]!r}")
                return
            stop = head.find(b"\r\n", at + 2)
            self.need = end + 4 + int(head[at + 17 : stop if stop > 0 else None])
        if len(buf) < self.need:
            return
        if len(buf) > self.need:
            self.load.fail(self, "bytes after the reply (nothing was pipelined)")
            return
        body = bytes(buf[buf.find(b"\r\n\r\n") + 4 :]) if self.status != 200 else b""
        buf.clear()
        self.need = -1
        agent, self.agent = self.agent, -1
        self.load.replied(self, agent, self.status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self, exc)


class HeartbeatLoad:
    """``n`` agents heartbeating every ``interval`` s to the coordinator at ``url``, their
    schedules spread evenly over the interval, over ``conns`` keep-alive connections."""

    def __init__(
        self,
        url: str,
        token: str,
        n: int,
        interval: float,
        *,
        first: int = 0,
        gpus: int = 8,
        conns: int = 0,
    ) -> None:
        """Agents are named ``sim-{first}`` on: loads sharing a database need distinct ones.
        ``conns`` 0 opens one connection per agent, as a real fleet holds."""
        self.url, self.n, self.interval, self.conns = url, n, interval, conns or n
        self.first = first
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token, self.gpus = token, gpus
        self.bodies = heartbeat_bodies(gpus)
        self.lengths = [b"%d\r\n\r\n" % len(b) for b in self.bodies]
        self.ids: list[str] = [""] * n
        self.heads: list[bytes] = [b""] * n
        self.beats = [0] * n
        self.busy = [False] * n
        self.last_ok = [0.0] * n
        self.max_gap = 0.0
        """Longest time any agent went without an accepted heartbeat (from registration)."""
        self.registered = 0
        self.heartbeats = 0
        self.statuses: Counter[int] = Counter()
        self.samples: dict[int, bytes] = {}
        """The start of one reply body per non-200 status."""
        self.errors: Counter[str] = Counter()
        self.skipped = 0
        """Slots missed because the agent's previous heartbeat was still unanswered."""
        self.max_lag = 0.0
        self.max_queue = 0
        self._idle: deque[_Conn] = deque()
        """Oldest idle first: every connection carries its share, as when each agent holds
        its own (the coordinator sees each connection as busy as the fleet makes it)."""
        self._queue: deque[tuple[int, float]] = deque()
        self._open: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.loop = asyncio.get_running_loop()

    # -- registration (aiohttp, not timed) ----------------------------------------------

    def _head(self, agent_id: str) -> bytes:
        """The request head aiohttp writes for ``Link._post``, up to the Content-Length value."""
        return (
            f"POST /api/agents/{agent_id}/heartbeat HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: */*\r\n"
            "Accept-Encoding: gzip, deflate\r\n"
            f"User-Agent: {SERVER_SOFTWARE}\r\n"
            "Content-Length: "
        ).encode()

    async def _register(self, session: aiohttp.ClientSession, i: int) -> None:
        async with session.post(
            self.url + "/api/agents",
            data=registration(self.first + i, self.gpus, self.interval),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT,
        ) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"registration refused: HTTP {r.status}: {body[:300]!r}")
        self.ids[i] = msgspec.json.decode(body, type=_Reply).id
        self.heads[i] = self._head(self.ids[i])
        self.last_ok[i] = self.loop.time()
        self.registered += 1

    async def register_all(self, session: aiohttp.ClientSession, concurrency: int = 32) -> None:
        """Every agent, ``concurrency`` at a time, as a restarting fleet arrives."""
        self._session = session
        todo = iter(range(self.n))

        async def worker() -> None:
            for i in todo:
                await self._register(session, i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    # -- heartbeats ----------------------------------------------------------------------

    async def _connect(self) -> None:
        _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        await conn.ready
        self._open.add(conn)
        self._idle.append(conn)
        self._pump()

    async def run(self, t0: float) -> None:
        """Heartbeat from ``t0`` on, forever: agent ``i`` is due at ``t0 + i * interval / n``
        and every interval after; an agent not yet registered skips its slot."""
        for _ in range(self.conns):
            await self._connect()
        step = self.interval / self.n
        base, i = t0, 0
        while True:
            now = self.loop.time()
            while (due := base + i * step) <= now:
                if self.heads[i]:
                    if self.busy[i]:
                        self.skipped += 1
                    else:
                        self.busy[i] = True
                        self._queue.append((i, due))
                i += 1
                if i == self.n:
                    i, base = 0, base + self.interval
            self.max_queue = max(self.max_queue, len(self._queue))
            self._pump()
            # Wake at most every 5 ms: heartbeats due meanwhile leave together.
            await asyncio.sleep(max(0.005, base + i * step - self.loop.time()))

    def _pump(self) -> None:
        queue, idle = self._queue, self._idle
        now = self.loop.time()
        while queue and idle:
            i, due = queue.popleft()
            lag = now - due
            if lag > self.max_lag:
                self.max_lag = lag
            k = (i + self.beats[i]) % BODIES
            idle.popleft().send(i, self.heads[i] + self.lengths[k] + self.bodies[k])

    def replied(self, conn: _Conn, agent: int, status: int, body: bytes) -> None:
        self.statuses[status] += 1
        self.busy[agent] = False
        if status == 200:
            now = self.loop.time()
            gap = now - self.last_ok[agent]
            if gap > self.max_gap:
                self.max_gap = gap
            self.last_ok[agent] = now
            self.beats[agent] += 1
            self.heartbeats += 1
        else:
            self.samples.setdefault(status, body[:300])
            if status == 404:  # forgotten: a real agent registers again
                self.heads[agent] = b""
                self._spawn(self._reregister(agent))
        self._idle.append(conn)
        self._pump()

    async def _reregister(self, i: int) -> None:
        assert self._session is not None
        self.registered -= 1
        try:
            await self._register(self._session, i)
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as e:
            self.errors[f"re-registration: {e}"] += 1

    def fail(self, conn: _Conn, why: str) -> None:
        self.errors[why] += 1
        if conn.transport is not None:
            conn.transport.close()  # connection_lost frees the agent and reconnects

    def lost(self, conn: _Conn, exc: Exception | None) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.agent >= 0:
            self.errors[f"connection lost mid-request: {exc or 'closed by the server'}"] += 1
            self.busy[conn.agent] = False
        self._spawn(self._connect())

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def last_accepted(self, i: int) -> bytes | None:
        """The body of agent ``i``'s last heartbeat answered 200, None while one is in flight
        (the coordinator may hold a newer one) or before the first."""
        if self.busy[i] or not self.beats[i]:
            return None
        return self.bodies[(i + self.beats[i] - 1) % BODIES]

    def reset_window(self) -> None:
        self.max_lag = 0.0
        self.max_queue = 0

    def close(self) -> None:
        """Stop: connections closed, late replies ignored (agents in flight stay busy)."""
        for conn in list(self._open):
            conn.load = _Closed()  # type: ignore[assignment]
            if conn.transport is not None:
                conn.transport.close()
        self._open.clear()
        for task in self._tasks:
            task.cancel()

    def non_200(self) -> str:
        """Every status other than 200 with its count and one body, or "none"."""
        bad = {s: c for s, c in self.statuses.items() if s != 200}
        parts = [f"{c}× HTTP {s} ({self.samples.get(s, b'')[:120]!r})" for s, c in bad.items()]
        parts += [f"{c}× {why}" for why, c in self.errors.items()]
        return "; ".join(parts) or "none"


class _Closed:
    """Stands in for the load once it is closed: late callbacks do nothing."""

    def replied(self, *args: object) -> None: ...

    def fail(self, *args: object) -> None: ...

    def lost(self, *args: object) -> None: ...
