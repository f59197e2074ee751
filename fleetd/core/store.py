"""What survives a coordinator restart: agents, tasks, installed models, cached catalog.

``Store`` is the small interface the coordinator uses; ``SqliteStore`` implements it with one
thread owning the connection (WAL). Coroutines enqueue work and await a future; the thread
drains everything queued and commits once, so many small writes cost one transaction.
``PgStore`` (core/pgstore.py) implements the same methods on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
from aiohttp import web

from fleetd.core.counts import sqlite_add
from fleetd.core.errors import ApiError
from fleetd.core.keystore import SQLITE_MIGRATION, KeyStore, SqliteKeyStore
from fleetd.core.tokens import private_files
from fleetd.core.wire import Agent, InstalledModel, Task

log = logging.getLogger("fleetd.store")

T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: agents, tasks, installed models, key-value cache
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        instance_id TEXT NOT NULL DEFAULT '',
        data BLOB NOT NULL
    );
    CREATE INDEX agents_url ON agents(url);
    CREATE INDEX agents_instance ON agents(instance_id);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        status TEXT NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX tasks_agent ON tasks(agent_id);
    CREATE TABLE installed (
        agent_id TEXT NOT NULL,
        model TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (agent_id, model)
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 2: when each agent's installed models were last read, one row per agent (a single kv
    # value for the whole fleet cost O(agents) to rewrite on every registration)
    """
    CREATE TABLE installed_as_of (
        agent_id TEXT PRIMARY KEY,
        as_of TEXT NOT NULL
    );
    INSERT INTO installed_as_of(agent_id, as_of)
        SELECT j.key, j.value FROM kv, json_each(CAST(kv.value AS TEXT)) AS j
        WHERE kv.key = 'installed_as_of';
    DELETE FROM kv WHERE key = 'installed_as_of'
    """,
    # 3: managed API keys and their usage per minute (core/keystore.py)
    SQLITE_MIGRATION,
]


class StoreUnavailable(ApiError):
    """The database cannot be reached or written right now: answered as 503
    ``store_unavailable``; the store recovers by itself once the database is back."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "store_unavailable", message, headers={"Retry-After": "5"})


class Store(KeyStore, Protocol):
    """Persistence the coordinator needs; every method is safe to await on the event loop."""

    async def load_agents(self) -> list[Agent]: ...
    async def save_agents(self, agents: Iterable[Agent]) -> None: ...
    async def load_tasks(self) -> list[Task]: ...
    async def save_tasks(self, tasks: Iterable[Task]) -> None: ...
    async def load_installed(self) -> dict[str, list[InstalledModel]]: ...
    async def save_installed(
        self, lists: Mapping[str, Iterable[InstalledModel]], as_of: Mapping[str, datetime]
    ) -> None:
        """Each agent's list in ``lists`` replaces the one stored, ``as_of`` says when
        agents' lists were read: all in one write, however many agents."""

    async def load_installed_as_of(self) -> dict[str, datetime]: ...
    async def delete_agent(self, agent_id: str) -> None: ...
    async def delete_tasks(self, task_ids: Iterable[str]) -> None: ...
    async def get_kv(self, key: str) -> bytes | None: ...
    async def set_kv(self, key: str, value: bytes) -> None: ...
    async def add_counts(self, key: str, deltas: Mapping[str, int]) -> dict[str, int]: ...
    async def check(self) -> str | None: ...
    async def close(self) -> None: ...


_STOP = object()


class _Op:
    """One unit of work for the store thread and the future its caller awaits."""

    __slots__ = ("fn", "fut", "loop", "writes")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        fut: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        writes: bool,
    ) -> None:
        self.fn, self.fut, self.loop, self.writes = fn, fut, loop, writes

    def settle(self, result: Any, exc: BaseException | None) -> None:
        """From the store thread: hand the outcome to the caller's loop. A caller that left
        (cancelled: a client hung up) or a loop already closed gets nothing, and nothing fails."""
        try:
            self.loop.call_soon_threadsafe(_settle, self.fut, result, exc)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


class SqliteStore(SqliteKeyStore):
    """SQLite in ``data_dir/fleetd.db``; one writer thread, batched commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fleetd-store", daemon=True)
        self._ready: Future[None] = Future()
        self._closed = False
        self.fault: str | None = None
        """Why the last write failed (``database or disk is full``…); ``None`` once one works."""
        self._enc = msgspec.msgpack.Encoder()
        self._agent_dec = msgspec.msgpack.Decoder(Agent)
        self._task_dec = msgspec.msgpack.Decoder(Task)
        self._model_dec = msgspec.msgpack.Decoder(InstalledModel)

    async def open(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def _connect(self) -> sqlite3.Connection:
        # Created owner-only before SQLite opens it: SQLite gives the -wal and -shm files the
        # database file's mode, so all three stay 0600 whatever the umask.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        wal, shm = (self.path.with_name(self.path.name + s) for s in ("-wal", "-shm"))
        private_files(self.path, wal, shm)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database {self.path} has schema version {version}, newer than this fleetd "
                f"({len(MIGRATIONS)}); upgrade fleetd"
            )
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN")
            for stmt in script.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={i}")
            conn.execute("COMMIT")
            log.info("database %s migrated to schema version %d", self.path, i)
        return conn

    def _run(self) -> None:
        try:
            conn = self._connect()
        except Exception as e:
            self._ready.set_exception(e)
            return
        self._ready.set_result(None)
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops = [item for item in batch if item is not _STOP]
            stop = len(ops) < len(batch)
            if ops:
                self._run_batch(conn, ops)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, ops: list[_Op]) -> None:
        """One transaction for ``ops``. An op's own error fails only that op (its savepoint is
        rolled back); an error of the transaction itself (a full disk, an I/O error, a failed
        rollback) fails every op of the batch. Nothing escapes: the thread must keep serving."""
        done: list[tuple[_Op, Any]] = []
        failed: list[tuple[_Op, BaseException]] = []
        try:
            conn.execute("BEGIN")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    done.append((op, op.fn(conn)))
                except sqlite3.OperationalError:
                    raise  # the database itself is unwell (full, I/O, read-only): all fail
                except Exception as e:
                    failed.append((op, e))
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may have rolled back already; the next BEGIN starts clean
            self._fault(e)
            err = StoreUnavailable(f"the database {self.path} cannot be written: {e}")
            own = {id(op): exc for op, exc in failed}
            failed = [(op, own.get(id(op), err)) for op in ops]
            done = []
        else:
            if any(op.writes for op, _ in done):
                self._recovered()
        for op, result in done:
            op.settle(result, None)
        for op, exc in failed:
            op.settle(None, exc)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], writes: bool = False) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        if not self._thread.is_alive():
            raise StoreUnavailable(f"the database {self.path} is not open (its thread stopped)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, fut, loop, writes))
        return await fut

    def _fault(self, e: sqlite3.Error) -> None:
        if self.fault is None:
            log.error(
                "cannot write the database %s: %s; writes answer 503 until it can", self.path, e
            )
        self.fault = str(e)

    def _recovered(self) -> None:
        if self.fault is not None:
            log.warning("the database %s can be written again", self.path)
        self.fault = None

    async def check(self) -> str | None:
        """``None`` when the database can be written, else why not. A store that failed tries
        a throw-away write (big enough to need a new page) so that recovery shows without
        waiting for real traffic."""
        if self.fault is None:
            return None

        def probe(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO kv(key, value) VALUES ('probe', zeroblob(8192))")
            c.execute("DELETE FROM kv WHERE key = 'probe'")

        try:
            await self._submit(probe, writes=True)
        except StoreUnavailable:
            pass
        return self.fault

    async def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``sql`` for each row. Nothing comes back: a cursor handed to the event loop's
        thread and collected there would reset its statement under the store thread's feet
        (SQLite: "bad parameter or other API misuse")."""

        def write(c: sqlite3.Connection) -> None:
            c.executemany(sql, rows)

        await self._submit(write, writes=True)

    async def close(self) -> None:
        if self._closed or not self._thread.is_alive():
            self._closed = True
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join, 10)
        if self._thread.is_alive():
            log.error("store thread did not stop within 10 s; pending writes may be lost")

    async def load_agents(self) -> list[Agent]:
        rows = await self._submit(lambda c: c.execute("SELECT data FROM agents").fetchall())
        return [self._agent_dec.decode(r[0]) for r in rows]

    async def save_agents(self, agents: Iterable[Agent]) -> None:
        rows = [(a.id, a.url, a.instance_id, self._enc.encode(a)) for a in agents]
        await self._write(
            "INSERT OR REPLACE INTO agents(id, url, instance_id, data) VALUES (?,?,?,?)", rows
        )

    async def load_tasks(self) -> list[Task]:
        rows = await self._submit(lambda c: c.execute("SELECT data FROM tasks").fetchall())
        return [self._task_dec.decode(r[0]) for r in rows]

    async def save_tasks(self, tasks: Iterable[Task]) -> None:
        rows = [(t.id, t.agent_id, t.status, self._enc.encode(t)) for t in tasks]
        await self._write(
            "INSERT OR REPLACE INTO tasks(id, agent_id, status, data) VALUES (?,?,?,?)", rows
        )

    async def load_installed(self) -> dict[str, list[InstalledModel]]:
        rows = await self._submit(
            lambda c: c.execute("SELECT agent_id, data FROM installed").fetchall()
        )
        out: dict[str, list[InstalledModel]] = {}
        for agent_id, data in rows:
            out.setdefault(agent_id, []).append(self._model_dec.decode(data))
        return out

    async def save_installed(
        self, lists: Mapping[str, Iterable[InstalledModel]], as_of: Mapping[str, datetime]
    ) -> None:
        # One op: a whole fleet registering at once costs one transaction per flush, not two
        # queued writes per agent.
        gone = [(agent_id,) for agent_id in lists]
        rows = [(a, m.name, self._enc.encode(m)) for a, models in lists.items() for m in models]
        # RFC 3339 text, as the API shows it
        dated = [(a, msgspec.json.encode(t)[1:-1].decode()) for a, t in as_of.items()]

        def write(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM installed WHERE agent_id = ?", gone)
            c.executemany("INSERT INTO installed(agent_id, model, data) VALUES (?,?,?)", rows)
            c.executemany(
                "INSERT OR REPLACE INTO installed_as_of(agent_id, as_of) VALUES (?,?)", dated
            )

        await self._submit(write, writes=True)

    async def delete_agent(self, agent_id: str) -> None:
        """The agent and what it had installed; its tasks stay (cancelled, for the record)."""

        def write(c: sqlite3.Connection) -> None:
            for table in ("agents", "installed", "installed_as_of"):
                key = "id" if table == "agents" else "agent_id"
                c.execute(f"DELETE FROM {table} WHERE {key} = ?", (agent_id,))

        await self._submit(write, writes=True)

    async def delete_tasks(self, task_ids: Iterable[str]) -> None:
        await self._write("DELETE FROM tasks WHERE id = ?", [(i,) for i in task_ids])

    async def load_installed_as_of(self) -> dict[str, datetime]:
        rows = await self._submit(
            lambda c: c.execute("SELECT agent_id, as_of FROM installed_as_of").fetchall()
        )
        return {agent_id: msgspec.convert(as_of, datetime) for agent_id, as_of in rows}

    async def get_kv(self, key: str) -> bytes | None:
        row = await self._submit(
            lambda c: c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def set_kv(self, key: str, value: bytes) -> None:
        await self._write("INSERT OR REPLACE INTO kv(key, value) VALUES (?,?)", [(key, value)])

    async def add_counts(self, key: str, deltas: Mapping[str, int]) -> dict[str, int]:
        """Add ``deltas`` to the counters under ``key`` (core/counts.py); the new totals."""
        return await self._submit(lambda c: sqlite_add(c, key, deltas), writes=True)


STORE = web.AppKey("store", Store)
