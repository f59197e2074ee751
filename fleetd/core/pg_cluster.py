"""PgStore's queries for coordinators sharing the database (coordinator/cluster.py): rows
read by id when another coordinator announces them, the registration claim that makes two
coordinators agree on an agent's id, and the last-contact table the offline sweep consults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from fleetd.core.wire import Agent, InstalledModel, Task

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)


class PgClusterStore:
    """PgStore's cluster methods (mixed into PgStore)."""

    _enc: msgspec.msgpack.Encoder
    _agent_dec: msgspec.msgpack.Decoder[Agent]
    _task_dec: msgspec.msgpack.Decoder[Task]
    _model_dec: msgspec.msgpack.Decoder[InstalledModel]

    async def _with_conn(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    async def _submit(self, op: Callable[[Conn], Awaitable[None]]) -> None:
        raise NotImplementedError

    async def _announce(self, conn: Conn, kind: str, ids: list[str]) -> None:
        raise NotImplementedError

    async def agents_by_id(self, ids: list[str]) -> list[Agent]:
        rows = await self._fetch("SELECT data FROM agents WHERE id = ANY($1)", ids)
        return [self._agent_dec.decode(r[0]) for r in rows]

    async def tasks_by_id(self, ids: list[str]) -> list[Task]:
        rows = await self._fetch("SELECT data FROM tasks WHERE id = ANY($1)", ids)
        return [self._task_dec.decode(r[0]) for r in rows]

    async def installed_of(self, agent_ids: list[str]) -> dict[str, list[InstalledModel]]:
        out: dict[str, list[InstalledModel]] = {a: [] for a in agent_ids}
        sql = "SELECT agent_id, data FROM installed WHERE agent_id = ANY($1)"
        for agent_id, data in await self._fetch(sql, agent_ids):
            out[agent_id].append(self._model_dec.decode(data))
        return out

    async def claim_agent(self, fresh: Agent) -> Agent:
        """The agent already recorded with ``fresh``'s instance id (else URL), or ``fresh``
        itself, inserted: one transaction under a lock on the instance, so coordinators that
        register the same agent at once agree on its id."""

        async def claim(conn: Conn) -> Agent:
            async with conn.transaction():
                key = fresh.instance_id or fresh.url
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
                data = None
                if fresh.instance_id:
                    data = await conn.fetchval(
                        "SELECT data FROM agents WHERE instance_id = $1 LIMIT 1", fresh.instance_id
                    )
                if data is None:
                    data = await conn.fetchval(
                        "SELECT data FROM agents WHERE url = $1 LIMIT 1", fresh.url
                    )
                if data is not None:
                    found: Agent = self._agent_dec.decode(data)
                    return found
                await conn.execute(
                    "INSERT INTO agents(id, url, instance_id, data) VALUES ($1,$2,$3,$4)",
                    fresh.id,
                    fresh.url,
                    fresh.instance_id,
                    self._enc.encode(fresh),
                )
                await self._announce(conn, "a", [fresh.id])
                return fresh

        return await self._with_conn(claim)

    async def save_contacts(self, agent_ids: list[str]) -> None:
        """These agents were heard from just now (the database's clock)."""

        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO fleetd_contact(agent_id, seen_at)"
                " SELECT unnest($1::text[]), now()"
                " ON CONFLICT (agent_id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
                agent_ids,
            )
            await self._announce(conn, "c", agent_ids)

        if agent_ids:
            await self._submit(op)

    async def heard_within(self, agent_ids: list[str], seconds: float) -> set[str]:
        """Which of ``agent_ids`` some coordinator heard from in the last ``seconds``."""
        rows = await self._fetch(
            "SELECT agent_id FROM fleetd_contact WHERE agent_id = ANY($1)"
            " AND seen_at > now() - make_interval(secs => $2)",
            agent_ids,
            seconds,
        )
        return {r[0] for r in rows}
