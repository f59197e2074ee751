"""The mirror as the coordinator's routes see it: the cache, the fetcher, manifests from
upstream (kept for air-gapped use), the byte counters and their Prometheus twins.

The byte counters are the fleet's, counted since the database was created: each save adds
what this coordinator counted since the last one to the store's totals (``add_counts``) and
takes the totals back, so coordinators sharing a database add up their counts instead of
overwriting each other's. The Prometheus counters are this process's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from fleetd.config import CoordinatorConfig, expand
from fleetd.coordinator.distribution import DISTRIBUTION
from fleetd.coordinator.metrics import METRICS
from fleetd.coordinator.mirror.cache import Cache, Manifest
from fleetd.coordinator.mirror.fetcher import Fetcher, Flight, Throttle
from fleetd.coordinator.settings import SETTINGS
from fleetd.core.background import background
from fleetd.core.catalog import network_reason
from fleetd.core.counts import decode_counts
from fleetd.core.events import EVENTS, EventBus
from fleetd.core.http import CLIENT
from fleetd.core.store import STORE, Store, StoreUnavailable
from fleetd.core.wire import TERMINAL

log = logging.getLogger("fleetd.mirror")

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_FRESH_S = 300.0
"""A stored manifest younger than this is served without asking upstream."""
MANIFEST_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
COUNTERS_KEY = "mirror_counters"
SAVE_INTERVAL_S = 2.0
PUBLISH_INTERVAL_S = 1.0


class UpstreamError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Counters(msgspec.Struct):
    upstream_bytes: int = 0
    served_bytes: int = 0


class Mirror:
    def __init__(
        self,
        settings: CoordinatorConfig,
        cache: Cache,
        session: aiohttp.ClientSession,
        store: Store,
        registry: CollectorRegistry,
        needed_models: Callable[[], set[str]],
    ) -> None:
        m = settings.mirror
        self.enabled = m.enabled
        self.registry_url = settings.registry_url
        self.cache = cache
        self.store = store
        self.session = session
        self.counters = _Counters()
        """The database's totals as last read, plus what was counted here since."""
        self._unsaved = _Counters()
        """What was counted here and is not yet added to the database's totals."""
        self.fetcher = Fetcher(
            cache,
            session,
            settings.registry_url,
            Throttle(m.upstream_bandwidth_bps),
            self._up,
            needed_models,
        )
        self.sizes: dict[str, int] = {}
        """Blob sizes learnt from manifests: digest -> bytes."""
        r = registry
        self.upstream_total = Counter(
            "fleetd_mirror_upstream_bytes", "Bytes the mirror fetched from upstream", registry=r
        )
        self.served_total = Counter(
            "fleetd_mirror_served_bytes", "Bytes the mirror served to clients", registry=r
        )
        self.cached_gauge = Gauge("fleetd_mirror_cached_bytes", "Bytes in the cache", registry=r)
        self.cached_gauge.set_function(lambda: cache.bytes_cached)
        self.fetching_gauge = Gauge(
            "fleetd_mirror_fetches", "Blobs being fetched from upstream", registry=r
        )
        self.fetching_gauge.set_function(lambda: len(self.fetcher.flights))

    def _up(self, n: int) -> None:
        self.counters.upstream_bytes += n
        self._unsaved.upstream_bytes += n
        self.upstream_total.inc(n)

    def served(self, n: int) -> None:
        self.counters.served_bytes += n
        self._unsaved.served_bytes += n
        self.served_total.inc(n)

    # -- manifests -------------------------------------------------------------------------

    async def manifest(self, namespace: str, model: str, tag: str) -> bytes:
        """Stored if fresh, else upstream's (stored), else stored of any age; raises
        UpstreamError with the status to answer."""
        stored = await asyncio.to_thread(self.cache.read_manifest, namespace, model, tag)
        if stored is not None and stored[1] < MANIFEST_FRESH_S:
            self._learn(stored[0])
            return stored[0]
        url = f"{self.registry_url}/v2/{namespace}/{model}/manifests/{tag}"
        try:
            async with self.session.get(
                url, headers={"Accept": MANIFEST_TYPE}, timeout=MANIFEST_TIMEOUT
            ) as r:
                body = await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            reason = network_reason(err, MANIFEST_TIMEOUT)
            if stored is not None:
                log.info("mirror: upstream %s: %s; serving the stored manifest", url, reason)
                self._learn(stored[0])
                return stored[0]
            raise UpstreamError(502, f"upstream {url}: {reason}") from None
        if status == 200 and self._learn(body):
            await asyncio.to_thread(self.cache.write_manifest, namespace, model, tag, body)
            return body
        if stored is not None:
            self._learn(stored[0])
            return stored[0]
        if status == 404:
            raise UpstreamError(404, f"manifest {namespace}/{model}:{tag} unknown upstream")
        raise UpstreamError(502, f"upstream {url}: HTTP {status}")

    def _learn(self, body: bytes) -> bool:
        try:
            manifest = msgspec.json.decode(body, type=Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        for b in manifest.blobs:
            self.sizes[b.digest] = b.size
        return True

    # -- blobs -----------------------------------------------------------------------------

    async def locate(self, repo: str, digest: str) -> int | Flight:
        """The size of a complete blob, or the flight bringing it (started if need be)."""
        if not self.cache.has(digest):
            path = self.cache.blob_path(digest)
            size = await asyncio.to_thread(_size_of, path)
            if size is not None:  # imported while we ran
                self.cache.add(digest, size)
        if self.cache.has(digest) and digest not in self.fetcher.flights:
            self.cache.touch(digest)
            return self.cache.sizes[digest]
        return self.fetcher.start(repo, digest, self.sizes.get(digest))

    # -- lifecycle -------------------------------------------------------------------------

    async def save_counters(self) -> None:
        """Add what was counted here to the database's totals (only read them when nothing
        was), and show those totals: other coordinators' counts included."""
        sent, self._unsaved = self._unsaved, _Counters()
        try:
            if sent == _Counters():
                totals = decode_counts(await self.store.get_kv(COUNTERS_KEY), COUNTERS_KEY)
            else:
                totals = await self.store.add_counts(COUNTERS_KEY, msgspec.structs.asdict(sent))
        except BaseException:
            self._unsaved.upstream_bytes += sent.upstream_bytes  # added by the next save
            self._unsaved.served_bytes += sent.served_bytes
            raise
        fresh = msgspec.convert(totals, _Counters)
        fresh.upstream_bytes += self._unsaved.upstream_bytes  # counted during the save
        fresh.served_bytes += self._unsaved.served_bytes
        self.counters = fresh

    async def status(self) -> dict[str, Any]:
        """``GET /api/mirror``'s answer (and the dashboard's ``mirror`` event)."""
        cache = self.cache
        await asyncio.to_thread(cache.rescan)
        models = await asyncio.to_thread(cache.models)
        return {
            "enabled": self.enabled,
            "max_bytes": cache.max_bytes,
            "bytes_cached": cache.bytes_cached,
            "upstream_bytes": self.counters.upstream_bytes,
            "served_bytes": self.counters.served_bytes,
            "fetching": [
                {"digest": f.digest, "have": f.have, "size": f.size}
                for f in self.fetcher.flights.values()
            ],
            "models": [
                {"name": name, "bytes": size, "complete": complete}
                for name, size, complete in models
            ],
        }

    async def run_saver(self, events: EventBus) -> None:
        """Counters to the store every 2 s; a ``mirror`` event every second while they move
        (the dashboard's cache fill, live)."""
        last = msgspec.structs.replace(self.counters)
        ticks = 0
        was_busy = False
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            ticks += 1
            busy = bool(self.fetcher.flights)
            # One more message after the last fetch ends: it carries the blob's "complete".
            if self.counters != last or busy or was_busy:
                last = msgspec.structs.replace(self.counters)
                was_busy = busy
                if events.subscribers:
                    events.publish("mirror", await self.status())
            if ticks % round(SAVE_INTERVAL_S / PUBLISH_INTERVAL_S) == 0:
                try:
                    await self.save_counters()
                except StoreUnavailable:
                    pass  # the store said why; the next save adds what this one could not
                except Exception as err:  # the store may be closing; the next save catches up
                    log.warning("mirror: cannot save counters: %s", err)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


MIRROR = web.AppKey("mirror", Mirror)


async def mirror_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the client's, the store's and the distribution's entries: the cache opened,
    counters loaded."""
    settings = app[SETTINGS]
    cache = Cache(expand(settings.data_dir) / "mirror", settings.mirror.max_bytes)
    await asyncio.to_thread(cache.open)
    dist = app[DISTRIBUTION]

    def needed() -> set[str]:
        return {t.model for t in dist.tasks.values() if t.status not in TERMINAL}

    mirror = Mirror(settings, cache, app[CLIENT], app[STORE], app[METRICS].registry, needed)
    await mirror.save_counters()  # nothing counted yet: reads the totals
    app[MIRROR] = mirror
    async with background(mirror.run_saver(app[EVENTS]), "mirror-counters"):
        yield
    await mirror.fetcher.close()
    await mirror.save_counters()
