"""Which agent has which model installed: the one owner of that fact on the coordinator.

Every report goes through here: the list an agent sends when it registers, the list in a
progress report (sent when it changed on the agent), the list read from the agent on demand
(``GET {agent}/fleetd/models``), and a download task that completed. Readers (the gateway,
the distribution, the matrix, the catalog's fleet fallback, ``/api/pull``) ask through
methods, and whoever must follow changes adds an ``on_change`` listener.

Each agent's list is kept as last reported, with the time it was read (``as_of``), so it can
be shown when the agent is slow or gone. Lists are written to the store every half second and
on close, all that changed in one write, as tasks are, so a report never waits for the
database (registrations of a whole fleet at once would); an agent repeats its list whenever
it registers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime
from types import MappingProxyType

from aiohttp import web

from fleetd.core.background import background
from fleetd.core.names import InvalidModelName, normalize
from fleetd.core.store import STORE, Store, StoreUnavailable
from fleetd.core.wire import InstalledModel, utcnow

log = logging.getLogger("fleetd.inventory")

Listener = Callable[[str], None]

_NONE: Mapping[str, InstalledModel] = MappingProxyType({})
_NO_AGENTS: frozenset[str] = frozenset()


class Inventory:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._models: dict[str, dict[str, InstalledModel]] = {}
        """Agent id -> its installed models by (normalized) name."""
        self._holders: dict[str, set[str]] = {}
        """Model -> the agents that have it, so ``agents_with`` does not scan the fleet."""
        self._as_of: dict[str, datetime] = {}
        self._reports: dict[str, int] = {}
        """Agent id -> how many full lists it reported since this coordinator started."""
        self._dirty: set[str] = set()
        """Agents whose list must be written again."""
        self._dirty_as_of: set[str] = set()
        self.on_change: list[Listener] = []
        """Called with the agent id whenever the models an agent has changed."""

    async def load(self) -> None:
        for agent_id, models in (await self.store.load_installed()).items():
            self._set(agent_id, {m.name: m for m in models})
        self._as_of = await self.store.load_installed_as_of()

    # -- reports -------------------------------------------------------------------------

    def report(self, agent_id: str, models: Iterable[InstalledModel]) -> None:
        """The agent's whole list, as it just read it: kept, and dated now."""
        by_name: dict[str, InstalledModel] = {}
        for m in models:
            try:
                m.name = normalize(m.name)
            except InvalidModelName:
                continue  # not a model Ollama could be asked for
            by_name[m.name] = m
        self._reports[agent_id] = self._reports.get(agent_id, 0) + 1
        self._as_of[agent_id] = utcnow()
        self._dirty_as_of.add(agent_id)
        if self._models.get(agent_id) != by_name:
            self._set(agent_id, by_name)
            self._changed(agent_id)

    def completed(self, agent_id: str, model: str, size: int, at: datetime | None) -> None:
        """A download task of ``agent_id`` completed: the model is there now (its exact entry
        comes with the agent's next list)."""
        if model in self._models.get(agent_id, _NONE):
            return
        models = dict(self._models.get(agent_id, _NONE))
        models[model] = InstalledModel(name=model, size=size, installed_at=at)
        self._set(agent_id, models)
        self._changed(agent_id)

    def deleted(self, agent_id: str, model: str) -> None:
        """A delete task of ``agent_id`` completed: the model is gone there."""
        models = self._models.get(agent_id, _NONE)
        if model in models:
            self._set(agent_id, {name: m for name, m in models.items() if name != model})
            self._changed(agent_id)

    def forget(self, agent_id: str) -> None:
        """The agent was removed (the store drops its rows with it): nothing to write."""
        self._set(agent_id, {})
        del self._models[agent_id]
        self._as_of.pop(agent_id, None)
        self._reports.pop(agent_id, None)
        self._dirty.discard(agent_id)
        self._dirty_as_of.discard(agent_id)
        for fn in self.on_change:
            fn(agent_id)

    def taken(self, agent_id: str, models: list[InstalledModel]) -> None:
        """The agent's list as another coordinator wrote it (cluster.py): kept, not written
        again."""
        by_name = {m.name: m for m in models}
        self._as_of[agent_id] = utcnow()
        if self._models.get(agent_id) != by_name:
            self._set(agent_id, by_name)
            for fn in self.on_change:
                try:
                    fn(agent_id)
                except Exception:
                    log.exception("listener %r failed for agent %s", fn, agent_id)

    def _set(self, agent_id: str, models: dict[str, InstalledModel]) -> None:
        for name in self._models.get(agent_id, _NONE).keys() - models.keys():
            holders = self._holders[name]
            holders.discard(agent_id)
            if not holders:
                del self._holders[name]
        for name in models:
            self._holders.setdefault(name, set()).add(agent_id)
        self._models[agent_id] = models

    def _changed(self, agent_id: str) -> None:
        self._dirty.add(agent_id)
        for fn in self.on_change:
            try:
                fn(agent_id)
            except Exception:
                log.exception("listener %r failed for agent %s", fn, agent_id)

    # -- readers -------------------------------------------------------------------------

    def has(self, agent_id: str, model: str) -> bool:
        return model in self._models.get(agent_id, _NONE)

    def get(self, agent_id: str, model: str) -> InstalledModel | None:
        return self._models.get(agent_id, _NONE).get(model)

    def models(self, agent_id: str) -> Mapping[str, InstalledModel]:
        """The agent's installed models by name (read-only; empty when none are known)."""
        models = self._models.get(agent_id)
        return MappingProxyType(models) if models else _NONE

    def agents_with(self, model: str) -> AbstractSet[str]:
        """The ids of the agents that have ``model``, online or not: a live view, not a copy
        (O(1); read it before the next report)."""
        return self._holders.get(model, _NO_AGENTS)

    def holdings(self) -> Iterator[InstalledModel]:
        """Every (agent, model) entry, one per agent that has it."""
        for models in self._models.values():
            yield from models.values()

    def as_of(self, agent_id: str) -> datetime | None:
        """When the agent's list was last read from the agent itself."""
        return self._as_of.get(agent_id)

    def reports(self, agent_id: str) -> int:
        """A counter that grows with every full list from the agent: compare two readings to
        know whether it reported in between."""
        return self._reports.get(agent_id, 0)

    # -- persistence ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Every list and date that changed since the last flush, in one store write (a
        fleet registering at once is thousands of lists, not thousands of writes)."""
        dirty, self._dirty = self._dirty, set()
        dated, self._dirty_as_of = self._dirty_as_of, set()
        if not dirty and not dated:
            return
        lists = {agent_id: list(self.models(agent_id).values()) for agent_id in dirty}
        as_of = {a: self._as_of[a] for a in dated if a in self._as_of}
        try:
            await self.store.save_installed(lists, as_of)
        except BaseException:
            self._dirty |= dirty  # written by the next flush that works
            self._dirty_as_of |= dated
            raise


INVENTORY = web.AppKey("inventory", Inventory)

FLUSH_INTERVAL_S = 0.5


async def inventory_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx entry after the store's; before everything that reads the inventory."""
    inventory = app[INVENTORY] = Inventory(app[STORE])
    await inventory.load()
    async with background(_flush_loop(inventory), "inventory-flush"):
        yield
    await inventory.flush()


async def _flush_loop(inventory: Inventory) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        try:
            await inventory.flush()
        except StoreUnavailable:
            pass  # the store said why; the lists stay dirty until it can write
        except Exception:
            log.exception("writing installed models to the store failed; will retry")
