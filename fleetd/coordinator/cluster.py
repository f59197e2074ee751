"""Coordinators sharing one PostgreSQL database: one fleet, whichever coordinator is asked.

Each coordinator keeps the fleet in memory as before; this module keeps those memories in step.

- Changes: every write of agents, tasks or installed models announces the ids it wrote with
  ``NOTIFY fleetd_changes`` in its own transaction (core/pgstore.py), so others hear of it
  once committed. Here one dedicated connection LISTENs, reads the rows named and applies
  them where newer by ``revision`` (registry/distribution ``apply_remote``), which publishes
  them on this coordinator's ``/api/events``. An agent whose row is gone was removed: it
  leaves memory here too. Key-value entries that others follow (the supported list) are read
  again by their owner (``on_kv``). A lost connection means news may have been missed: on
  reconnecting, everything is read again (same rule: newer wins).
- Contacts: agents heard from here are written, twice a second and in one statement, to
  ``fleetd_contact`` and announced; the others count that as contact, so no agent is judged
  offline because it talks to another coordinator.
- Registration: the database decides the id of an agent that this coordinator does not know
  (``PgStore.claim_agent``), so an agent has one id everywhere.
- Duties that run once (the offline sweep, re-sending orders that did not arrive) belong to
  the coordinator holding a session-level ``pg_advisory_lock`` on that same connection. The
  lock dies with the connection: when its holder is killed, another takes over within
  ``LEASE_CHECK_S``.

With SQLite there is one coordinator, which holds every duty; none of this runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from fleetd.coordinator.distribution import DISTRIBUTION, Distribution
from fleetd.coordinator.gateway import GATEWAY
from fleetd.coordinator.inventory import INVENTORY, Inventory
from fleetd.coordinator.model_sets import KV_KEY as SUPPORTED_KEY
from fleetd.coordinator.model_sets import MODEL_SETS
from fleetd.coordinator.registry import REGISTRY, Registry
from fleetd.core.background import background
from fleetd.core.pg_conn import CONNECT_TIMEOUT_S, describe
from fleetd.core.pg_notify import CHANGES, Change
from fleetd.core.pgstore import PgStore
from fleetd.core.store import STORE

log = logging.getLogger("fleetd.cluster")

LEADER_LOCK = 0x666C656574640002
"""pg_advisory_lock key of the duties that run on one coordinator at a time."""
LEASE_CHECK_S = 1.0
"""How often the lock holder checks its connection, and the others try to take the lock."""
CONTACT_FLUSH_S = 0.5


class Cluster:
    def __init__(
        self, store: PgStore, registry: Registry, dist: Distribution, inventory: Inventory
    ) -> None:
        self.store = store
        self.registry = registry
        self.dist = dist
        self.inventory = inventory
        self.origin = uuid.uuid4().hex[:12]
        self.conn: Any = None
        self._news: asyncio.Queue[Change] = asyncio.Queue()
        self._dec = msgspec.json.Decoder(Change)
        self._lost = asyncio.Event()
        self.on_kv: dict[str, Callable[[], Awaitable[None]]] = {}
        """Key-value key -> what reads it again when another coordinator wrote it."""

    def attach(self) -> None:
        self.store.origin = self.origin
        self.registry.arbiter = self.store.claim_agent
        self.registry.heard_within = self.store.heard_within
        self.registry.contacted = set()
        self.dist.tasks_by_id = self.store.tasks_by_id
        self._lead(False)

    def _lead(self, leading: bool) -> None:
        if leading == self.registry.leading and leading == self.dist.leading:
            return
        was = self.registry.leading
        self.registry.leading = self.dist.leading = leading
        if leading:
            log.info("this coordinator now runs the offline sweep and order retries")
            self.dist.take_over()
        elif was and self.conn is not None:
            log.warning("this coordinator no longer runs the offline sweep and order retries")

    # -- the session connection: LISTEN and the lock -------------------------------------

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            change = self._dec.decode(payload)
        except msgspec.DecodeError:
            log.warning("unreadable change notice ignored: %.200s", payload)
            return
        if change.o != self.origin:
            self._news.put_nowait(change)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.store.url, timeout=CONNECT_TIMEOUT_S)
        try:
            await conn.add_listener(CHANGES, self._heard)
            conn.add_termination_listener(lambda _c: self._lost.set())
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        self._lost.clear()

    async def _drop(self) -> None:
        self._lead(False)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def run_session(self) -> None:
        """Keep the session connection: reconnect (and read everything again), hold or try
        the lock, step down at once when the connection is in doubt."""
        failing = False
        while True:
            try:
                if self.conn is not None and self.conn.is_closed():
                    raise ConnectionError("the connection was closed")
                if self.conn is None:
                    await self._connect()
                    await self.resync()
                    if failing:
                        log.info("cluster connection to the database is back")
                        failing = False
                if self.registry.leading:
                    await self.conn.fetchval("SELECT 1", timeout=LEASE_CHECK_S * 2)
                else:
                    got = await self.conn.fetchval(
                        "SELECT pg_try_advisory_lock($1)", LEADER_LOCK, timeout=LEASE_CHECK_S * 2
                    )
                    self._lead(bool(got))
            except (
                OSError,
                asyncio.TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as e:
                if not failing:
                    log.warning(
                        "cluster connection to the database lost (%s); this coordinator "
                        "leaves its duties to others until it is back",
                        describe(e, self.store.url),
                    )
                    failing = True
                await self._drop()
            try:
                await asyncio.wait_for(self._lost.wait(), LEASE_CHECK_S)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close(timeout=5)  # releases the lock at once for the others
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    # -- applying other coordinators' news ------------------------------------------------

    async def resync(self) -> None:
        """Read everything again (after a gap in the news); newer copies win."""
        stored = await self.store.load_agents()
        for a in stored:
            self.registry.apply_remote(a)
        gone = self.registry.agents.keys() - {a.id for a in stored}
        if gone:  # or registered since the read: asked again
            await self._agents(list(gone))
        for t in await self.store.load_tasks():
            self.dist.apply_remote(t)
        for agent_id, models in (await self.store.load_installed()).items():
            self.inventory.taken(agent_id, models)
        for reload in self.on_kv.values():
            await reload()

    async def run_news(self) -> None:
        """Apply notices in batches: all that arrived while the last batch was read."""
        while True:
            batch = [await self._news.get()]
            while not self._news.empty():
                batch.append(self._news.get_nowait())
            ids: dict[str, dict[str, None]] = {"a": {}, "t": {}, "i": {}, "c": {}, "k": {}}
            for change in batch:
                ids.setdefault(change.k, {}).update(dict.fromkeys(change.ids))
            try:
                await self._apply(ids)
            except Exception as e:
                log.warning("cannot read other coordinators' changes: %s; reading all later", e)
                self._lost.set()
                await self._drop()

    async def _apply(self, ids: dict[str, dict[str, None]]) -> None:
        if ids["c"]:
            self.registry.heard_elsewhere(list(ids["c"]))
        if ids["a"]:
            await self._agents(list(ids["a"]))
        if ids["t"]:
            for t in await self.store.tasks_by_id(list(ids["t"])):
                self.dist.apply_remote(t)
        if ids["i"]:
            for agent_id, models in (await self.store.installed_of(list(ids["i"]))).items():
                self.inventory.taken(agent_id, models)
        for key in ids["k"]:
            if (reload := self.on_kv.get(key)) is not None:
                await reload()

    async def _agents(self, ids: list[str]) -> None:
        """Read these agents again; those no longer in the database were removed."""
        stored = await self.store.agents_by_id(ids)
        for a in stored:
            self.registry.apply_remote(a)
        for agent_id in set(ids) - {a.id for a in stored}:
            if (gone := self.registry.get(agent_id)) is not None:
                await self.registry.forget(gone, elsewhere=True)
                self.inventory.forget(agent_id)

    async def run_contacts(self) -> None:
        """Write who was heard from here, at most once per flush per agent."""
        contacted = self.registry.contacted
        assert contacted is not None
        while True:
            await asyncio.sleep(CONTACT_FLUSH_S)
            if not contacted:
                continue
            batch = sorted(contacted)
            contacted.clear()
            try:
                await self.store.save_contacts(batch)
            except Exception as e:
                log.warning("cannot record agents' contacts in the database: %s", e)


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Registered after the gateway's entry; does nothing without PostgreSQL."""
    store = app[STORE]
    if not isinstance(store, PgStore):
        yield
        return
    cluster = Cluster(store, app[REGISTRY], app[DISTRIBUTION], app[INVENTORY])
    cluster.attach()
    cluster.on_kv[SUPPORTED_KEY] = app[MODEL_SETS].reload
    app[REGISTRY].on_offline_elsewhere.append(app[GATEWAY].agent_offline)
    async with (
        background(cluster.run_news(), "cluster-news"),
        background(cluster.run_contacts(), "cluster-contacts"),
        background(cluster.run_session(), "cluster-session"),
    ):
        yield
    await cluster.close()
