"""Which models each agent must hold: the supported list (editable at runtime, kept in the
store) and the ``[[coordinator.placement]]`` rules that give the agents they match their own
set instead.

The config's ``supported_models`` seeds the store on the first start only; from then on
``PUT /api/supported-models`` decides, and the config's list is ignored (said in the log when
they differ). Listeners (``on_change``) hear of every change: the distribution orders what
agents lack, the gateway widens or narrows what it knows. With coordinators sharing a
database, a change made through one is ``reload``ed by the others (coordinator/cluster.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import msgspec
from aiohttp import web

from fleetd.config import CoordinatorConfig, PlacementRule
from fleetd.core.names import InvalidModelName, normalize
from fleetd.core.store import STORE, Store
from fleetd.core.wire import Agent

log = logging.getLogger("fleetd.models")

KV_KEY = "supported_models"
MAX_MODELS = 256


class InvalidModelList(ValueError):
    """The message names the entry and what is wrong with it."""


def check_list(models: list[str]) -> list[str]:
    """``models`` normalized, in order, each once; ``InvalidModelList`` names a bad entry."""
    if len(models) > MAX_MODELS:
        raise InvalidModelList(f"models: at most {MAX_MODELS} models, got {len(models)}")
    out: list[str] = []
    for i, name in enumerate(models):
        try:
            out.append(normalize(name))
        except InvalidModelName:
            raise InvalidModelList(f"models[{i}]: invalid model name {name!r}") from None
    return list(dict.fromkeys(out))


class ModelSets:
    def __init__(self, store: Store, seed: list[str], rules: list[PlacementRule]) -> None:
        self.store = store
        self.supported: list[str] = list(seed)
        self.rules = rules
        self.on_change: list[Callable[[bool], None]] = []
        """Called on every change, with whether it was made here (False: through another
        coordinator, which orders what the agents lack)."""
        self._writing = asyncio.Lock()
        """Held from reading or writing the stored list until it is taken: a reload never
        takes a list older than this coordinator's own write."""

    def _decode(self, raw: bytes) -> list[str] | None:
        try:
            return check_list(msgspec.json.decode(raw, type=list[str]))
        except (msgspec.DecodeError, InvalidModelList) as e:
            keep = ", ".join(self.supported) or "none"
            log.error("stored supported list unreadable (%s); keeping %s", e, keep)
            return None

    async def load(self) -> None:
        raw = await self.store.get_kv(KV_KEY)
        if raw is None:
            await self.store.set_kv(KV_KEY, msgspec.json.encode(self.supported))
            return
        stored = self._decode(raw)
        if stored is None:
            return
        if stored != self.supported:
            log.info(
                "supported models from the database (PUT /api/supported-models changes them; "
                "the config's supported_models only seeds a new database): %s",
                ", ".join(stored) or "none",
            )
        self.supported = stored

    async def set_supported(self, models: list[str]) -> None:
        async with self._writing:
            await self.store.set_kv(KV_KEY, msgspec.json.encode(models))
            self._take(models, local=True)

    async def reload(self) -> None:
        """Another coordinator sharing the database may have changed the list: take it."""
        async with self._writing:
            raw = await self.store.get_kv(KV_KEY)
            stored = None if raw is None else self._decode(raw)
            if stored is not None and stored != self.supported:
                self._take(stored, local=False)

    def _take(self, models: list[str], *, local: bool) -> None:
        self.supported = models
        how = "" if local else " (changed through another coordinator)"
        log.info("supported models now%s: %s", how, ", ".join(models) or "none")
        for fn in self.on_change:
            try:
                fn(local)
            except Exception:
                log.exception("listener %r failed on a supported-list change", fn)

    def rule_for(self, labels: dict[str, str]) -> PlacementRule | None:
        for rule in self.rules:
            if all(labels.get(k) == v for k, v in rule.match.items()):
                return rule
        return None

    def for_labels(self, labels: dict[str, str]) -> list[str]:
        rule = self.rule_for(labels)
        return list(rule.models) if rule is not None else list(self.supported)

    def for_agent(self, agent: Agent) -> list[str]:
        """What ``agent`` must hold (and keep resident): its rule's models, else the list."""
        return self.for_labels(agent.labels)

    def everything(self) -> list[str]:
        """Every supported or placed model, the supported ones first (``/v1/models``)."""
        names = list(self.supported)
        for rule in self.rules:
            names += rule.models
        return list(dict.fromkeys(names))

    def is_wanted(self, model: str) -> bool:
        return model in self.supported or any(model in r.models for r in self.rules)


MODEL_SETS = web.AppKey("model_sets", ModelSets)


def model_sets_ctx(settings: CoordinatorConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    """After the store's entry, before the registry's (registration counts the models)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        sets = ModelSets(app[STORE], settings.supported_models, settings.placement)
        await sets.load()
        app[MODEL_SETS] = sets
        yield

    return ctx
