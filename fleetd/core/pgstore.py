"""The ``Store`` on PostgreSQL, for coordinators that keep their state in a shared database.

Same tables and schema versions as SQLite, in PostgreSQL's dialect (BYTEA, TIMESTAMPTZ,
``ON CONFLICT`` upserts); applied versions are rows of ``fleetd_schema``, migrated under an
advisory lock so that coordinators starting together migrate once. Rows hold the same msgpack
bytes as SQLite's, so a SQLite database copies over byte for byte (``fleetd db migrate-sqlite``).

Reads go straight to the pool. Writes are queued and one writer task commits everything
queued in one transaction, as SqliteStore's thread does. A database that cannot be reached
fails the call with ``StoreUnavailable`` (503); the pool replaces broken connections, so the
store recovers by itself once PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import msgspec

from fleetd.config import redact_url
from fleetd.core.counts import pg_add
from fleetd.core.errors import StartupError
from fleetd.core.pg_cluster import PgClusterStore
from fleetd.core.pg_conn import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, UNAVAILABLE, describe
from fleetd.core.pg_notify import CHANGES, change_payloads
from fleetd.core.pg_schema import migrate
from fleetd.core.pgkeystore import PgKeyStore
from fleetd.core.pgtokens import PgTokenStore
from fleetd.core.store import StoreUnavailable
from fleetd.core.wire import Agent, InstalledModel, Task

log = logging.getLogger("fleetd.store")

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)


class PgStore(PgKeyStore, PgTokenStore, PgClusterStore):
    """PostgreSQL through an asyncpg pool; one writer task, batched commits."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        self.url = url
        self.where = redact_url(url)
        self.pool: Any = None
        self._max = max_connections
        self._pending: list[tuple[Callable[[Conn], Awaitable[None]], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._down = False
        self._enc = msgspec.msgpack.Encoder()
        self._agent_dec = msgspec.msgpack.Decoder(Agent)
        self._task_dec = msgspec.msgpack.Decoder(Task)
        self._model_dec = msgspec.msgpack.Decoder(InstalledModel)
        self.origin = ""
        """Set by the cluster (coordinator/cluster.py): writes then announce themselves on
        ``CHANGES`` in their own transaction, so others read them once committed."""

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.url,
            # No connection floor: asyncpg would refill it in the background while the
            # server is down, logging a traceback each time; requests reconnect on their own.
            min_size=0,
            max_size=self._max,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
        )
        try:
            async with self.pool.acquire() as conn:
                await migrate(conn, self.where)
        except BaseException:
            await self.pool.close()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="fleetd-pgstore")

    # -- failures ----------------------------------------------------------------------

    def _unavailable(self, e: BaseException) -> StoreUnavailable:
        reason = describe(e, self.url)
        if not self._down:
            self._down = True
            log.warning("database %s unavailable: %s", self.where, reason)
        return StoreUnavailable(f"the database cannot be reached ({reason}); try again shortly")

    def _up(self) -> None:
        if self._down:
            self._down = False
            log.info("database %s reachable again", self.where)

    async def _with_conn(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; a connection broken by a database restart is
        replaced and tried once more (every read and write here is idempotent)."""
        for attempt in (1, 2):
            try:
                async with self.pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                    result = await fn(conn)
                self._up()
                return result
            except UNAVAILABLE as e:
                if attempt == 2:
                    raise self._unavailable(e) from None
        raise AssertionError("unreachable")

    # -- writes --------------------------------------------------------------------------

    async def _submit(self, op: Callable[[Conn], Awaitable[None]]) -> None:
        if self._closed or self._writer is None or self._writer.done():
            raise RuntimeError("store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        await fut

    async def _write_loop(self) -> None:
        while not (self._closed and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit(batch)

    async def _commit(
        self, batch: list[tuple[Callable[[Conn], Awaitable[None]], asyncio.Future[None]]]
    ) -> None:
        """All of ``batch`` in one transaction; if one operation is refused, each runs in its
        own so that only the faulty one fails."""

        async def run(ops: list[Callable[[Conn], Awaitable[None]]]) -> None:
            async def tx(conn: Conn) -> None:
                async with conn.transaction():
                    for op in ops:
                        await op(conn)

            await self._with_conn(tx)

        def settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
            if fut.done():  # the caller gave up waiting; the write stands regardless
                return
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        try:
            await run([op for op, _ in batch])
        except StoreUnavailable as e:
            for _, fut in batch:
                settle(fut, StoreUnavailable(e.message))
            return
        except Exception as e:
            if len(batch) == 1:
                settle(batch[0][1], e)
                return
            for op, fut in batch:
                try:
                    await run([op])
                except Exception as one:
                    settle(fut, one)
                else:
                    settle(fut, None)
            return
        for _, fut in batch:
            settle(fut, None)

    async def _announce(self, conn: Conn, kind: str, ids: list[str]) -> None:
        if self.origin and ids:
            for payload in change_payloads(self.origin, kind, ids):
                await conn.execute("SELECT pg_notify($1, $2)", CHANGES, payload)

    async def _write(
        self, sql: str, rows: list[tuple[Any, ...]], kind: str = "", ids: list[str] | None = None
    ) -> None:
        if not rows:
            return

        async def op(conn: Conn) -> None:
            await conn.executemany(sql, rows)
            await self._announce(conn, kind, ids or [])

        await self._submit(op)

    async def check(self) -> str | None:
        """``None`` when the database answers, else why not (for ``/healthz``)."""
        try:
            await self._fetch("SELECT 1")
        except StoreUnavailable as e:
            return e.message
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 10)
            except asyncio.TimeoutError:
                log.error("database connections did not close within 10 s")
                self.pool.terminate()

    # -- the Store interface ---------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        if self._closed:
            raise RuntimeError("store is closed")

        async def fetch(conn: Conn) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        return await self._with_conn(fetch)

    async def load_agents(self) -> list[Agent]:
        return [self._agent_dec.decode(r[0]) for r in await self._fetch("SELECT data FROM agents")]

    async def save_agents(self, agents: Iterable[Agent]) -> None:
        rows = [(a.id, a.url, a.instance_id, self._enc.encode(a)) for a in agents]
        await self._write(
            "INSERT INTO agents(id, url, instance_id, data) VALUES ($1,$2,$3,$4)"
            " ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url,"
            " instance_id = EXCLUDED.instance_id, data = EXCLUDED.data",
            rows,
            "a",
            [r[0] for r in rows],
        )

    async def load_tasks(self) -> list[Task]:
        return [self._task_dec.decode(r[0]) for r in await self._fetch("SELECT data FROM tasks")]

    async def save_tasks(self, tasks: Iterable[Task]) -> None:
        rows = [(t.id, t.agent_id, t.status, self._enc.encode(t)) for t in tasks]
        await self._write(
            "INSERT INTO tasks(id, agent_id, status, data) VALUES ($1,$2,$3,$4)"
            " ON CONFLICT (id) DO UPDATE SET agent_id = EXCLUDED.agent_id,"
            " status = EXCLUDED.status, data = EXCLUDED.data",
            rows,
            "t",
            [r[0] for r in rows],
        )

    async def load_installed(self) -> dict[str, list[InstalledModel]]:
        out: dict[str, list[InstalledModel]] = {}
        for agent_id, data in await self._fetch("SELECT agent_id, data FROM installed"):
            out.setdefault(agent_id, []).append(self._model_dec.decode(data))
        return out

    async def save_installed(
        self, lists: Mapping[str, Iterable[InstalledModel]], as_of: Mapping[str, datetime]
    ) -> None:
        ids = list(lists)
        rows = [(a, m.name, self._enc.encode(m)) for a, models in lists.items() for m in models]
        dated = list(as_of.items())

        async def op(conn: Conn) -> None:
            if ids:
                await conn.execute("DELETE FROM installed WHERE agent_id = ANY($1)", ids)
            if rows:
                # ON CONFLICT: another coordinator may write the same agent's list meanwhile
                await conn.executemany(
                    "INSERT INTO installed(agent_id, model, data) VALUES ($1,$2,$3)"
                    " ON CONFLICT (agent_id, model) DO UPDATE SET data = EXCLUDED.data",
                    rows,
                )
            if dated:
                await conn.executemany(
                    "INSERT INTO installed_as_of(agent_id, as_of) VALUES ($1,$2)"
                    " ON CONFLICT (agent_id) DO UPDATE SET as_of = EXCLUDED.as_of",
                    dated,
                )
            await self._announce(conn, "i", ids)

        await self._submit(op)

    async def load_installed_as_of(self) -> dict[str, datetime]:
        rows = await self._fetch("SELECT agent_id, as_of FROM installed_as_of")
        return {agent_id: as_of for agent_id, as_of in rows}

    async def delete_agent(self, agent_id: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM agents WHERE id = $1", agent_id)
            await conn.execute("DELETE FROM installed WHERE agent_id = $1", agent_id)
            await conn.execute("DELETE FROM installed_as_of WHERE agent_id = $1", agent_id)
            await self._announce(conn, "a", [agent_id])  # others read it gone, and forget it

        await self._submit(op)

    async def delete_tasks(self, task_ids: Iterable[str]) -> None:
        await self._write("DELETE FROM tasks WHERE id = $1", [(i,) for i in task_ids])

    async def get_kv(self, key: str) -> bytes | None:
        rows = await self._fetch("SELECT value FROM kv WHERE key = $1", key)
        return bytes(rows[0][0]) if rows else None

    async def set_kv(self, key: str, value: bytes) -> None:
        await self._write(
            "INSERT INTO kv(key, value) VALUES ($1,$2)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            [(key, value)],
            "k",
            [key],
        )

    async def add_counts(self, key: str, deltas: Mapping[str, int]) -> dict[str, int]:
        totals: dict[str, int] = {}

        async def op(conn: Conn) -> None:
            totals.update(await pg_add(conn, key, deltas))

        await self._submit(op)
        return totals


async def open_pg_store(url: str, key: str) -> PgStore:
    """A ready PgStore, or a ``StartupError`` of one line naming ``key``, password hidden."""
    store = PgStore(url)
    try:
        await store.open()
    except Exception as e:
        raise StartupError(
            f"{key} = {redact_url(url)!r}: cannot open the database: {describe(e, url)}"
        ) from None
    return store
