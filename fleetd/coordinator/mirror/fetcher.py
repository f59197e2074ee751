"""Single-flight fetches of blobs from the upstream registry into the cache.

One ``Flight`` per digest, however many agents ask at the same moment: it streams the blob
from ``registry_url`` (redirects to the CDN followed) into ``<digest>.partial``, resuming
with ``Range`` from what is already on disk (after a restart or a kill -9), hashes as it
goes, and moves the file into place only when its sha256 matches. Readers follow ``have``
(bytes on disk) and wait for more; nothing is held in memory beyond one chunk. Upstream
bytes/s are capped by one ``Throttle`` shared by every flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp

from fleetd.coordinator.mirror.cache import Cache
from fleetd.core.background import Jobs
from fleetd.core.catalog import network_reason

log = logging.getLogger("fleetd.mirror")

CHUNK = 1 << 20
RETRIES = 4
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)


class FetchError(Exception):
    """The blob could not be fetched (or failed its check); the message names the digest."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class Throttle:
    """A token bucket over all upstream reads; 0 bytes/s = no cap."""

    def __init__(self, rate_bps: int) -> None:
        self.rate = rate_bps
        self._free_at = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._free_at = max(now, self._free_at) + n / self.rate
        wait = self._free_at - now
        if wait > 0.001:
            await asyncio.sleep(wait)


class Flight:
    """One blob on its way from upstream to the cache."""

    def __init__(self, digest: str, path: Path, size: int | None) -> None:
        self.digest = digest
        self.path = path
        self.size = size
        self.have = 0
        self.done = False
        self.error: str | None = None
        self.error_status = 502
        """404 when upstream does not know the blob."""
        self.task: asyncio.Task[None] | None = None
        self.hasher = hashlib.sha256()
        """sha256 of the bytes on disk so far."""
        self.sized = asyncio.Event()
        self._moved = asyncio.Event()
        if size is not None:
            self.sized.set()

    def publish(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait_beyond(self, pos: int) -> None:
        """Until more than ``pos`` bytes are on disk, the flight ends, or it fails."""
        while self.have <= pos and not self.done:
            await self._moved.wait()


class Fetcher:
    def __init__(
        self,
        cache: Cache,
        session: aiohttp.ClientSession,
        registry_url: str,
        throttle: Throttle,
        on_upstream: Callable[[int], None],
        needed_models: Callable[[], set[str]],
    ) -> None:
        self.cache = cache
        self.session = session
        self.registry_url = registry_url.rstrip("/")
        self.throttle = throttle
        self.on_upstream = on_upstream
        self.needed_models = needed_models
        """Models of running tasks: their blobs are never evicted."""
        self.flights: dict[str, Flight] = {}
        self.jobs = Jobs("mirror")

    def start(self, repo: str, digest: str, size: int | None) -> Flight:
        """Join the flight of ``digest`` or start one (``repo``: ``namespace/model``)."""
        flight = self.flights.get(digest)
        if flight is None:
            flight = self.flights[digest] = Flight(digest, self.cache.partial_path(digest), size)
            self.cache.pin(digest)
            flight.task = self.jobs.spawn(self._run(flight, repo), name=f"mirror {digest}")
        elif flight.size is None and size is not None:
            flight.size = size
            flight.sized.set()
        return flight

    async def close(self) -> None:
        await self.jobs.close()

    async def _run(self, flight: Flight, repo: str) -> None:
        url = f"{self.registry_url}/v2/{repo}/blobs/{flight.digest}"
        try:
            flight.have = await asyncio.to_thread(_hash_prefix, flight.path, flight.hasher)
            if flight.have:
                log.info("mirror: resuming %s at %d bytes", flight.digest, flight.have)
            for attempt in range(RETRIES + 1):
                try:
                    await self._fetch(flight, url)
                    break
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                    reason = network_reason(err, TIMEOUT)
                    if attempt == RETRIES:
                        raise FetchError(
                            f"blob {flight.digest}: upstream {url}: {reason} "
                            f"(gave up after {RETRIES} retries)"
                        ) from None
                    log.warning(
                        "mirror: %s: %s; resuming in %ds", flight.digest, reason, 2**attempt
                    )
                    await asyncio.sleep(2**attempt)
            got = "sha256:" + flight.hasher.hexdigest()
            if got != flight.digest:
                await asyncio.to_thread(flight.path.unlink, missing_ok=True)
                self.cache.set_partial(flight.digest, None)
                raise FetchError(
                    f"blob {flight.digest} from upstream failed its sha256 check (got {got}); "
                    "discarded, the next request fetches it again"
                )
            await asyncio.to_thread(self.cache.complete, flight.digest, flight.path)
            log.info("mirror: %s complete (%d bytes)", flight.digest, flight.have)
        except FetchError as err:
            flight.error, flight.error_status = str(err), err.status
            log.warning("mirror: %s", err)
        except Exception as err:
            flight.error = f"blob {flight.digest}: internal error: {err!r}"
            log.exception("mirror: fetching %s failed unexpectedly", flight.digest)
        finally:
            flight.done = True
            flight.sized.set()
            flight.publish()
            self.flights.pop(flight.digest, None)
            self.cache.unpin(flight.digest)

    async def _fetch(self, flight: Flight, url: str) -> None:
        """One upstream request from ``have`` to the end, appended to the partial file."""
        headers = {"Range": f"bytes={flight.have}-"} if flight.have else {}
        async with self.session.get(url, headers=headers, timeout=TIMEOUT) as r:
            if r.status == 416 and flight.have > 0 and flight.have >= (flight.size or 0):
                flight.size = flight.size or flight.have
                return  # everything was already on disk (killed before the rename)
            if r.status not in (200, 206):
                body = (await r.content.read(300)).decode(errors="replace")
                message = f"blob {flight.digest}: upstream {url}: HTTP {r.status}: {body.strip()}"
                if r.status in (404, 401, 403):
                    raise FetchError(message, 404 if r.status == 404 else 502)
                raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
            if r.status == 200 and flight.have:
                log.info("mirror: upstream ignored Range for %s; fetching from 0", flight.digest)
                flight.hasher, flight.have = hashlib.sha256(), 0
                await asyncio.to_thread(_truncate, flight.path)
            length = r.content_length
            if length is not None and flight.size is None:
                flight.size = flight.have + length
                flight.sized.set()
            incoming = (flight.size or 0) - flight.have
            await asyncio.to_thread(self.cache.make_room, incoming, self.needed_models())
            fd = await asyncio.to_thread(_open_append, flight.path)
            try:
                while True:
                    chunk = await r.content.read(CHUNK)
                    if not chunk:
                        break
                    await asyncio.to_thread(_append, fd, chunk, flight.hasher)
                    flight.have += len(chunk)
                    self.cache.set_partial(flight.digest, flight.have)
                    self.on_upstream(len(chunk))
                    flight.publish()
                    await self.throttle.take(len(chunk))
            finally:
                await asyncio.to_thread(os.close, fd)
        if flight.size is not None and flight.have < flight.size:
            raise aiohttp.ClientPayloadError(f"upstream ended at {flight.have}/{flight.size} bytes")
        if flight.size is None:
            flight.size = flight.have


def _hash_prefix(path: Path, hasher: hashlib._Hash) -> int:
    """Hash what a previous run left in the partial file; its length is where to resume."""
    try:
        with path.open("rb") as f:
            n = 0
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                n += len(chunk)
            return n
    except FileNotFoundError:
        return 0


def _open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _append(fd: int, chunk: bytes, hasher: hashlib._Hash) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]
    hasher.update(chunk)


def _truncate(path: Path) -> None:
    with path.open("wb"):
        pass
