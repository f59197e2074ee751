"""``GET /api/models/catalog`` and ``/api/models/catalog/{name}``: the catalog plugin's models,
cached in memory (warm answers are pre-encoded bytes) and in the database (they survive a
restart), refreshed in the background once older than ``coordinator.catalog_refresh_s``.

When the library cannot be read and no good copy is cached, the catalog is built from the
models installed across the fleet, so that operators still see (and can distribute) what the
fleet holds while the library is down: ``source: "fleet"``, ``degraded: true`` and the
``reason``. A refresh that fails keeps the last good copy, marked ``stale`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any, Literal

import msgspec
from aiohttp import web

from fleetd.config import CoordinatorConfig
from fleetd.coordinator.auth import require_admin
from fleetd.coordinator.inventory import INVENTORY
from fleetd.core import names
from fleetd.core.background import background
from fleetd.core.catalog import (
    Catalog,
    CatalogError,
    CatalogModel,
    CatalogNotFound,
    CatalogTag,
    fleet_catalog,
)
from fleetd.core.errors import ApiError, bad_request
from fleetd.core.http import CLIENT
from fleetd.core.store import STORE, Store
from fleetd.core.wire import utcnow

log = logging.getLogger("fleetd.catalog")

routes = web.RouteTableDef()

LIST_KEY = "catalog:list"
MODEL_KEY = "catalog:model:"
COLD_WAIT_S = 9.5
"""A first request with nothing cached waits this long for the library: the models page
must load within 10 s, so past this it answers with the fleet's models instead."""
RETRY_S = 60.0
"""After a failed read of the library, requests are answered from the fallback this long
before one of them triggers the next attempt (a down library must not slow every request)."""

Source = Literal["ollama-library", "fleet"]


class CatalogTagEntry(CatalogTag, kw_only=True):
    supported: bool = False


class CatalogEntry(CatalogModel, kw_only=True):
    """A catalog model as the API shows it: ``supported`` when a supported model is one of
    its tags."""

    supported: bool = False


class CatalogListing(msgspec.Struct, kw_only=True):
    source: Source
    degraded: bool
    models: list[CatalogEntry]
    supported_models: list[str]
    fetched_at: datetime | None = None
    stale: bool = False
    reason: str | None = None


class ModelDetail(CatalogEntry, kw_only=True):
    source: Source = "ollama-library"
    degraded: bool = False
    fetched_at: datetime | None = None
    stale: bool = False
    reason: str | None = None


class _CachedList(msgspec.Struct):
    fetched_at: datetime
    models: list[CatalogModel]


class _CachedModel(msgspec.Struct):
    fetched_at: datetime
    model: CatalogModel


def repo_name(name: str) -> str:
    """The catalog's name for the model ``name`` belongs to: ``gpt-oss`` for ``gpt-oss:20b``."""
    return names.normalize(name).rpartition(":")[0]


def _age_s(ts: datetime) -> float:
    return (utcnow() - ts).total_seconds()


class CatalogService:
    """Owns the cache; ``run`` is the background refresher, woken by requests that find the
    cached list too old."""

    def __init__(
        self,
        source: Catalog,
        store: Store,
        installed: Callable[[], Iterable[tuple[str, int]]],
        supported: list[str],
        refresh_s: float,
    ) -> None:
        self.source = source
        self.store = store
        self.installed = installed
        self.supported = supported
        self.supported_repos = {repo_name(s) for s in supported}
        self.refresh_s = refresh_s
        self._list: _CachedList | None = None
        self._body: bytes | None = None
        """The encoded listing of ``_list``; None when it must be encoded again."""
        self._reason: str | None = None
        """Why the last read of the library failed; None after a success."""
        self._failed_at = 0.0
        self._refreshing = False
        self._wake = asyncio.Event()
        self._tried = asyncio.Event()
        self._models: dict[str, _CachedModel] = {}
        self._model_failed: dict[str, tuple[float, str]] = {}
        """Model -> when and why reading its tags last failed."""
        self._model_locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> None:
        """The copy cached in the database by an earlier run, if any."""
        raw = await self.store.get_kv(LIST_KEY)
        if raw is None:
            return
        try:
            self._list = msgspec.json.decode(raw, type=_CachedList)
        except msgspec.DecodeError as e:
            log.warning("cached model catalog is unreadable, ignoring it: %s", e)
            return
        log.info(
            "model catalog: %d models cached from %s",
            len(self._list.models),
            self._list.fetched_at.isoformat(timespec="seconds"),
        )

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("model catalog: refresh failed unexpectedly")

    def _due(self) -> bool:
        if self._refreshing:
            return False
        if self._reason is not None and time.monotonic() - self._failed_at < min(
            RETRY_S, self.refresh_s
        ):
            return False
        return self._list is None or _age_s(self._list.fetched_at) >= self.refresh_s

    async def refresh(self) -> None:
        """Read the library once; on failure keep what is cached and remember why. A copy
        that another coordinator sharing the database cached meanwhile is taken instead."""
        self._refreshing = True
        try:
            try:
                await self.load()
            except Exception as e:
                log.warning("model catalog: cannot read the cached copy: %s", e)
            if self._list is not None and _age_s(self._list.fetched_at) < self.refresh_s:
                self._body, self._reason = None, None
                self._tried.set()
                return
            models = await self._read_list()
        finally:
            self._refreshing = False
        if models is not None:
            self._list = _CachedList(fetched_at=utcnow(), models=models)
            self._reason = None
            self._body = None
            log.info("model catalog: %d models from the library", len(models))
        self._tried.set()
        if models is None:
            return
        try:
            await self.store.set_kv(LIST_KEY, msgspec.json.encode(self._list))
        except Exception as e:
            log.warning("model catalog: cannot cache it in the database: %s", e)
        # Exact sizes of the supported models, so the catalog shows them without a click.
        for repo in sorted(self.supported_repos):
            if any(m.name == repo for m in models):
                try:
                    await self.model(repo)
                except ApiError as e:
                    log.warning("model catalog: no tags for supported model %s: %s", repo, e)

    async def _read_list(self) -> list[CatalogModel] | None:
        """The library's models, or None (and the reason recorded) when they cannot be read."""
        try:
            models = await asyncio.wait_for(self.source.list_models(), COLD_WAIT_S)
        except (CatalogError, asyncio.TimeoutError) as e:
            self._failed(str(e) or f"no answer within {COLD_WAIT_S:g} s")
            return None
        except Exception:
            # A plugin bug or a page it cannot cope with must degrade the catalog, not kill it.
            log.exception("model catalog: reading the library failed unexpectedly")
            self._failed("internal error while reading the library")
            return None
        if not models:
            self._failed("the library page lists no models")
            return None
        return models

    def _failed(self, reason: str) -> None:
        self._reason = reason
        self._failed_at = time.monotonic()
        self._body = None
        fallback = "the last good copy" if self._list else "the fleet's installed models"
        log.warning("model catalog: library unavailable (%s); serving %s", reason, fallback)

    def _entry(self, m: CatalogModel) -> CatalogEntry:
        fields = msgspec.structs.asdict(m)
        detail = self._models.get(m.name)
        if fields["size"] is None and detail is not None:
            fields["size"] = detail.model.size
        return CatalogEntry(**fields, supported=m.name in self.supported_repos)

    def _fleet_models(self) -> list[CatalogModel]:
        return fleet_catalog(self.installed())

    async def listing(self) -> bytes:
        """The encoded listing: from memory when warm, the fleet's when nothing good exists."""
        if self._due():
            self._wake.set()
        if self._list is None and not self._tried.is_set():
            try:
                await asyncio.wait_for(self._tried.wait(), COLD_WAIT_S + 0.3)
            except asyncio.TimeoutError:
                pass
        if self._list is not None:
            if self._body is None:
                self._body = msgspec.json.encode(
                    CatalogListing(
                        source="ollama-library",
                        degraded=False,
                        models=[self._entry(m) for m in self._list.models],
                        supported_models=self.supported,
                        fetched_at=self._list.fetched_at,
                        stale=self._reason is not None,
                        reason=self._reason,
                    )
                )
            return self._body
        return msgspec.json.encode(
            CatalogListing(
                source="fleet",
                degraded=True,
                models=[self._entry(m) for m in self._fleet_models()],
                supported_models=self.supported,
                reason=self._reason or "the model library has not answered yet",
            )
        )

    def _detail(self, m: CatalogModel, **extra: Any) -> ModelDetail:
        fields = msgspec.structs.asdict(m)
        fields["tags"] = [
            CatalogTagEntry(**msgspec.structs.asdict(t), supported=t.name in self.supported)
            for t in m.tags or []
        ]
        return ModelDetail(**fields, supported=m.name in self.supported_repos, **extra)

    async def model(self, name: str) -> bytes:
        """One model with its tags; ``name`` must be valid. Raises ``ApiError`` 404/503."""
        repo = repo_name(name)
        async with self._model_locks.setdefault(repo, asyncio.Lock()):
            cached = self._models.get(repo) or await self._load_model(repo)
            if cached is not None and _age_s(cached.fetched_at) < self.refresh_s:
                return msgspec.json.encode(self._detail(cached.model, fetched_at=cached.fetched_at))
            failed_at, reason = self._model_failed.get(repo, (None, ""))
            if failed_at is None or time.monotonic() - failed_at >= min(RETRY_S, self.refresh_s):
                try:
                    m = await self.source.get_model(repo)
                except CatalogNotFound as e:
                    raise ApiError(404, "model_not_found", str(e)) from None
                except CatalogError as e:
                    reason = str(e)
                    self._model_failed[repo] = (time.monotonic(), reason)
                    log.warning("model catalog: tags of %s unavailable: %s", repo, reason)
                else:
                    self._model_failed.pop(repo, None)
                    return await self._store_model(repo, m)
            if cached is not None:
                return msgspec.json.encode(
                    self._detail(
                        cached.model, fetched_at=cached.fetched_at, stale=True, reason=reason
                    )
                )
            for m in self._fleet_models():
                if m.name == repo:
                    return msgspec.json.encode(
                        self._detail(m, source="fleet", degraded=True, reason=reason)
                    )
            raise ApiError(
                503,
                "catalog_unavailable",
                f"cannot read {repo!r} from the model library ({reason}) and no agent has it",
            )

    async def _load_model(self, repo: str) -> _CachedModel | None:
        raw = await self.store.get_kv(MODEL_KEY + repo)
        if raw is None:
            return None
        try:
            cached = msgspec.json.decode(raw, type=_CachedModel)
        except msgspec.DecodeError:
            return None
        self._models[repo] = cached
        return cached

    async def _store_model(self, repo: str, m: CatalogModel) -> bytes:
        cached = _CachedModel(fetched_at=utcnow(), model=m)
        self._models[repo] = cached
        self._body = None  # the listing shows this model's size now
        try:
            await self.store.set_kv(MODEL_KEY + repo, msgspec.json.encode(cached))
        except Exception as e:
            log.warning("model catalog: cannot cache %s in the database: %s", repo, e)
        return msgspec.json.encode(self._detail(m, fetched_at=cached.fetched_at))


CATALOG = web.AppKey("catalog", CatalogService)


def catalog_ctx(
    settings: CoordinatorConfig, source_cls: Callable[..., Catalog]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx entry for the catalog, with the plugin ``settings.catalog`` names
    (loaded before start-up, so an unknown name fails it). After the inventory's entry."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        inventory = app[INVENTORY]

        def installed() -> Iterable[tuple[str, int]]:
            return [(m.name, m.size) for m in inventory.holdings()]

        source: Catalog = source_cls(
            session=app[CLIENT],
            library_url=settings.library_url,
            registry_url=settings.registry_url,
        )
        service = CatalogService(
            source, app[STORE], installed, settings.supported_models, settings.catalog_refresh_s
        )
        await service.load()
        app[CATALOG] = service
        async with background(service.run(), "catalog-refresh"):
            yield

    return ctx


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


@routes.get("/api/models/catalog")
async def list_catalog(request: web.Request) -> web.Response:
    require_admin(request)
    return _json(await request.app[CATALOG].listing())


@routes.get("/api/models/catalog/{name:.+}")
async def get_catalog_model(request: web.Request) -> web.Response:
    require_admin(request)
    name = request.match_info["name"]
    if not names.is_valid(name):
        raise bad_request(f"invalid model name: {name!r}", code="invalid_model_name")
    return _json(await request.app[CATALOG].model(name))
