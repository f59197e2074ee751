"""What survives a coordinator restart: agents, tasks, installed models, cached catalog.

``Store`` is the small interface the coordinator uses; ``SqliteStore`` implements it with one
thread owning the connection (WAL). Coroutines enqueue work and await a future; the thread
drains everything queued and commits once, so many small writes cost one transaction.
``PgStore`` (core/pgstore.py) implements the same methods on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
from aiohttp import web

from fleetd.core.errors import ApiError
from fleetd.core.keystore import SQLITE_MIGRATION, KeyStore, SqliteKeyStore
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
    async def replace_installed(self, agent_id: str, models: Iterable[InstalledModel]) -> None: ...
    async def load_installed_as_of(self) -> dict[str, datetime]: ...
    async def save_installed_as_of(self, agent_id: str, as_of: datetime) -> None: ...
    async def get_kv(self, key: str) -> bytes | None: ...
    async def set_kv(self, key: str, value: bytes) -> None: ...
    async def close(self) -> None: ...


_STOP = object()


class SqliteStore(SqliteKeyStore):
    """SQLite in ``data_dir/fleetd.db``; one writer thread, batched commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fleetd-store", daemon=True)
        self._ready: Future[None] = Future()
        self._closed = False
        self._enc = msgspec.msgpack.Encoder()
        self._agent_dec = msgspec.msgpack.Decoder(Agent)
        self._task_dec = msgspec.msgpack.Decoder(Task)
        self._model_dec = msgspec.msgpack.Decoder(InstalledModel)

    async def open(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
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
            conn.execute("BEGIN")
            done: list[tuple[Future[Any], Any]] = []
            failed: list[tuple[Future[Any], BaseException]] = []
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                fn, fut = item
                conn.execute("SAVEPOINT op")
                try:
                    done.append((fut, fn(conn)))
                    conn.execute("RELEASE op")
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    failed.append((fut, e))
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                conn.execute("ROLLBACK")
                failed.extend((fut, e) for fut, _ in done)
                done = []
            for fut, result in done:
                fut.set_result(result)
            for fut, exc in failed:
                fut.set_exception(exc)
        conn.close()

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        return await asyncio.wrap_future(fut)

    async def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``sql`` for each row. Nothing comes back: a cursor handed to the event loop's
        thread and collected there would reset its statement under the store thread's feet
        (SQLite: "bad parameter or other API misuse")."""

        def write(c: sqlite3.Connection) -> None:
            c.executemany(sql, rows)

        await self._submit(write)

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

    async def replace_installed(self, agent_id: str, models: Iterable[InstalledModel]) -> None:
        rows = [(agent_id, m.name, self._enc.encode(m)) for m in models]

        def write(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM installed WHERE agent_id = ?", (agent_id,))
            c.executemany("INSERT INTO installed(agent_id, model, data) VALUES (?,?,?)", rows)

        await self._submit(write)

    async def load_installed_as_of(self) -> dict[str, datetime]:
        rows = await self._submit(
            lambda c: c.execute("SELECT agent_id, as_of FROM installed_as_of").fetchall()
        )
        return {agent_id: msgspec.convert(as_of, datetime) for agent_id, as_of in rows}

    async def save_installed_as_of(self, agent_id: str, as_of: datetime) -> None:
        text = msgspec.json.encode(as_of)[1:-1].decode()  # RFC 3339, as the API shows it
        await self._write(
            "INSERT OR REPLACE INTO installed_as_of(agent_id, as_of) VALUES (?,?)",
            [(agent_id, text)],
        )

    async def get_kv(self, key: str) -> bytes | None:
        row = await self._submit(
            lambda c: c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def set_kv(self, key: str, value: bytes) -> None:
        await self._write("INSERT OR REPLACE INTO kv(key, value) VALUES (?,?)", [(key, value)])


STORE = web.AppKey("store", Store)
