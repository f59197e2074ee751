"""A real pull from another registry (``host:port/namespace/model:tag``), done the way Ollama's
server/download.go does it, so that fleetd's registry mirror is tested against the protocol
a stock Ollama speaks: the manifest, then blob by blob a ``HEAD`` for the size, a ``GET`` for
the direct URL (a 307 to another host name or a 200 carrying ``Location``; anything else
fails as Ollama fails), parts fetched with ``Range`` and written where they belong (no status
check: a full 200 body corrupts the blob), and the sha256 check at the end.

Simplifications, said here so nobody mistakes them for Ollama's: part sizes scale with
``--size-scale`` (Ollama's 100 MB-1 GB times the scale, so tiny test blobs still come in
several parts); part retries back off from 0.1 s instead of 1 s; part progress lives in memory,
so a restarted sim starts a half-fetched blob over. Verified blobs are kept as byte counts
(like the simulated pulls), their files removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import aiohttp
import msgspec
from yarl import URL

from fleetd.sim import gotime, names
from fleetd.sim.catalog import MANIFEST_TYPE, Layer, Manifest, spec_from_manifest
from fleetd.sim.state import DiskFull, Download, Downloads, Installed, Knobs, Stats, Store

log = logging.getLogger(__name__)

PARTS = 16
RETRIES = 6
STALL_S = 30.0
_REDIRECTS = (301, 302, 303, 307, 308)


class PullError(Exception):
    """The pull failed; the message is Ollama's wording."""


class RealDownload(Download):
    """A pull from another registry; ``blobs`` is known once the manifest has come."""

    def __init__(self, name: str, insecure: bool) -> None:
        super().__init__(name, None)  # type: ignore[arg-type]
        self.insecure = insecure
        self.blobs: tuple[Layer, ...] = ()


class Fetcher(Downloads[RealDownload]):
    """Runs real pulls for one sim: its blob files, part progress, session and pacing."""

    def __init__(
        self, store: Store, knobs: Knobs, stats: Stats, blob_dir: Path, size_scale: float
    ) -> None:
        super().__init__()
        self.store, self.knobs, self.stats = store, knobs, stats
        self.blob_dir = blob_dir
        self.part_min = max(1, int(100e6 * size_scale))
        self.part_max = max(1, int(1e9 * size_scale))
        self.parts: dict[str, list[int]] = {}
        """Digest -> bytes done per part of a blob in progress."""
        self.session: aiohttp.ClientSession | None = None
        self._free_at = 0.0

    def attach(self, name: str, insecure: bool) -> RealDownload:
        return self._join(name, lambda: RealDownload(name, insecure))

    async def stop(self) -> None:
        await super().stop()
        if self.session is not None:
            await self.session.close()

    async def _run(self, dl: RealDownload) -> None:
        try:
            manifest = await self._manifest(dl)
            dl.blobs = (*manifest.layers, manifest.config)
            dl.publish()
            if any(self.store.blobs.get(b.digest, 0) < b.size for b in dl.blobs):
                self.stats.downloads[dl.name] += 1
            host = names.parse(dl.name)[0]
            for blob in dl.blobs:
                await self._blob(dl, host, blob)
            spec = spec_from_manifest(dl.name, manifest)
            self.store.installed[dl.name] = Installed(spec, gotime.now_ns())
            self.store.dirty = True
        except (PullError, DiskFull) as exc:
            dl.error = str(exc)
        except asyncio.CancelledError:
            dl.interrupted = True
            raise
        finally:
            dl.finished = True
            self.active.pop(dl.name, None)
            dl.publish()
            log.info("sim-ollama: pull %s ended: %s", dl.name, dl.error or "done")

    def _base(self, dl: RealDownload) -> str:
        host, namespace, model, _ = names.parse(dl.name)
        scheme = "http" if dl.insecure else "https"
        return f"{scheme}://{host}/v2/{namespace}/{model}"

    def _client(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=STALL_S)
            )
        return self.session

    async def _manifest(self, dl: RealDownload) -> Manifest:
        tag = names.parse(dl.name)[3]
        url = f"{self._base(dl)}/manifests/{tag}"
        try:
            async with self._client().get(url, headers={"Accept": MANIFEST_TYPE}) as r:
                body = await r.read()
                if r.status == 404:
                    raise PullError("pull model manifest: file does not exist")
                if r.status != 200:
                    text = body[:200].decode(errors="replace")
                    raise PullError(f"pull model manifest: {r.status}: {text}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PullError(f"pull model manifest: Get {url!r}: {exc or 'timeout'}") from None
        try:
            return msgspec.json.decode(body, type=Manifest)
        except msgspec.DecodeError as exc:
            raise PullError(f"pull model manifest: {exc}") from None

    async def _blob(self, dl: RealDownload, host: str, blob: Layer) -> None:
        if self.store.blobs.get(blob.digest, 0) >= blob.size and blob.digest not in self.parts:
            return  # already in blobs/: reused without any request
        url = f"{self._base(dl)}/blobs/{blob.digest}"
        try:
            total = await self._size(url)
            direct = await self._direct_url(url, host)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PullError(f"{blob.digest}: {exc or 'timeout'}") from None
        size = max(1, min(max(total // PARTS, self.part_min), self.part_max))
        spans = [(a, min(a + size, total)) for a in range(0, total, size)]
        done = self.parts.get(blob.digest)
        if done is None or len(done) != len(spans):
            done = self.parts[blob.digest] = [0] * len(spans)
            self.store.blobs[blob.digest] = 0
        path = self.blob_dir / (blob.digest.replace(":", "-") + "-partial")
        fd = await asyncio.to_thread(_open, path, total)
        try:
            sem = asyncio.Semaphore(PARTS)

            async def one(i: int) -> None:
                async with sem:
                    await self._part(dl, blob.digest, direct, fd, spans[i], done, i)

            await asyncio.gather(*(one(i) for i in range(len(spans))))
        finally:
            await asyncio.to_thread(os.close, fd)
        got = await asyncio.to_thread(_sha256, path)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        del self.parts[blob.digest]
        if got != blob.digest:
            self.store.blobs.pop(blob.digest, None)
            raise PullError(
                f"digest mismatch, file must be downloaded again: want {blob.digest}, got {got}"
            )

    async def _size(self, url: str) -> int:
        async with self._client().head(url, allow_redirects=True) as r:
            if r.status != 200:
                raise PullError(f"{url}: HEAD: unexpected status code {r.status}")
            length = r.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise PullError(f"{url}: HEAD: missing Content-Length")
            return int(length)

    async def _direct_url(self, url: str, host: str) -> URL:
        """Follow redirects to the same host name; stop at the first to another one."""
        target = URL(url)
        for _ in range(10):
            async with self._client().get(target, allow_redirects=False) as r:
                location = r.headers.get("Location")
                if r.status in _REDIRECTS and location is not None:
                    nxt = target.join(URL(location))
                    if nxt.host == target.host:
                        target = nxt
                        continue
                if r.status not in (200, 307):
                    raise PullError(f"unexpected status code {r.status}")
                if location is None:
                    raise PullError("http: no Location header in response")
                return target.join(URL(location))
        raise PullError("stopped after 10 redirects")

    async def _part(
        self,
        dl: RealDownload,
        digest: str,
        direct: URL,
        fd: int,
        span: tuple[int, int],
        done: list[int],
        i: int,
    ) -> None:
        start, end = span
        for attempt in range(RETRIES + 1):
            if done[i] >= end - start:
                return
            pos = start + done[i]
            try:
                headers = {"Range": f"bytes={pos}-{end - 1}"}
                async with self._client().get(direct, headers=headers) as r:
                    # No status check, as in Ollama: whatever body comes fills the part.
                    while pos < end:
                        chunk = await r.content.read(min(end - pos, 1 << 20))
                        if not chunk:
                            raise aiohttp.ClientPayloadError("unexpected EOF")
                        await asyncio.to_thread(os.pwrite, fd, chunk, pos)
                        written = self.store.write(digest, len(chunk))
                        if written < len(chunk):
                            raise DiskFull(digest)
                        pos += len(chunk)
                        done[i] += len(chunk)
                        self.stats.bytes_downloaded[dl.name] += len(chunk)
                        dl.publish()
                        await self._pace(len(chunk))
                return
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt == RETRIES:
                    raise PullError(f"max retries exceeded: {exc or 'timeout'}") from None
                await asyncio.sleep(0.1 * 2**attempt)

    async def _pace(self, n: int) -> None:
        """``bandwidth_bps`` is this server's link: every part of every pull shares it."""
        rate = self.knobs.bandwidth_bps
        if rate > 0:
            now = asyncio.get_running_loop().time()
            self._free_at = max(now, self._free_at) + n / rate
            await asyncio.sleep(self._free_at - now)


def _open(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    return fd


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
