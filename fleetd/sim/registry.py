"""The simulated registry (registry.ollama.ai and its CDN) with real bytes: every blob has
deterministic content and a real sha256 digest, so a pull through it, or through a mirror in
front of it, exercises the protocol a stock Ollama speaks (HEAD for the size, a 307 or Location
to the CDN, Range parts, the sha256 check).

Manifests are built lazily (hashing the content takes a thread, once per model): the
catalog's nominal digests stay what plain-name pulls and ``/api/tags`` report, and the
registry's manifest carries the real ones. Blobs of models above ``REAL_LIMIT`` bytes are
described but not served (hashing them would take minutes): use ``--size-scale``.

``/_sim/registry`` knobs (tests turn them to exercise failure modes): ``redirect`` = "cdn"
(307 to another host name, as registry.ollama.ai), "location" (200 with a Location header),
"plain" (200 without one) or "302"; ``ignore_range`` (the CDN answers a Range with the whole
blob); ``corrupt`` (digests whose bytes are served wrong); ``bandwidth_bps`` (CDN speed).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Iterator

import msgspec
from aiohttp import web

from fleetd.sim import names
from fleetd.sim.catalog import MANIFEST_TYPE, Layer, Manifest, ModelSpec
from fleetd.sim.context import SIM, decode, reply
from fleetd.sim.scheduler import SimError

routes = web.RouteTableDef()

REAL_LIMIT = 4_000_000_000
"""Models up to this many bytes get real blobs (hashing them takes about a second per GB)."""
BLOCK = 65536
CHUNK = 256 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RegistryKnobs(msgspec.Struct, forbid_unknown_fields=True):
    redirect: str = "cdn"
    ignore_range: bool = False
    corrupt: list[str] = msgspec.field(default_factory=list)
    bandwidth_bps: float = 0.0


class Blob(msgspec.Struct, frozen=True):
    seed: str
    size: int


def _block(seed: str) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def content(blob: Blob, start: int, end: int, corrupt: bool = False) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of a blob: its seed's block, repeated."""
    block = _block(blob.seed)
    if corrupt:
        block = bytes(b ^ 0xFF for b in block[:16]) + block[16:]
    pos = start
    while pos < end:
        off = pos % BLOCK
        n = min(end - pos, BLOCK - off, CHUNK)
        yield block[off : off + n]
        pos += n


def _digest(blob: Blob) -> str:
    h = hashlib.sha256()
    block = _block(blob.seed)
    full, rest = divmod(blob.size, BLOCK)
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
    return "sha256:" + h.hexdigest()


class Registry:
    """Real manifests, built on first request, and the blobs they name."""

    def __init__(self) -> None:
        self.knobs = RegistryKnobs()
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, Blob] = {}
        self.served_bytes = 0
        self._lock = asyncio.Lock()

    async def manifest(self, spec: ModelSpec) -> bytes:
        async with self._lock:
            if spec.name not in self.manifests:
                self.manifests[spec.name] = await asyncio.to_thread(self._build, spec)
            return self.manifests[spec.name]

    def _build(self, spec: ModelSpec) -> bytes:
        if spec.size > REAL_LIMIT:
            return spec.manifest_json()

        def real(layer: Layer) -> Layer:
            blob = Blob(layer.digest, layer.size)
            digest = _digest(blob)
            self.blobs[digest] = blob
            return Layer(layer.media_type, digest, layer.size)

        layers = tuple(real(layer) for layer in spec.layers)
        return msgspec.json.encode(Manifest(2, MANIFEST_TYPE, real(spec.config), layers))


REGISTRY = web.AppKey("sim_registry", Registry)


def _not_found(code: str, message: str) -> web.Response:
    return reply({"errors": [{"code": code, "message": message}]}, 404)


@routes.get(r"/v2/{repository:.+}/manifests/{tag}")
async def get_manifest(request: web.Request) -> web.Response:
    """The registry's manifest: config.size + sum(layers.size) = the pull's total."""
    store = request.app[SIM].store
    try:
        name = names.display(f"{request.match_info['repository']}:{request.match_info['tag']}")
    except names.InvalidName:
        name = ""
    spec = store.catalog.get(name)
    if spec is None:
        return _not_found("MANIFEST_UNKNOWN", "manifest unknown")
    body = await request.app[REGISTRY].manifest(spec)
    return web.Response(
        body=body,
        content_type=MANIFEST_TYPE,
        headers={"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()},
    )


def _blob(request: web.Request) -> tuple[str, Blob] | web.Response:
    digest = request.match_info["digest"]
    blob = request.app[REGISTRY].blobs.get(digest)
    if blob is None:
        return _not_found("BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
    return digest, blob


@routes.get(r"/v2/{repository:.+}/blobs/{digest}")
async def get_blob(request: web.Request) -> web.StreamResponse:
    """As registry.ollama.ai: HEAD gives the size, GET redirects to the CDN (or misbehaves as
    a knob says)."""
    found = _blob(request)
    if isinstance(found, web.Response):
        return found
    if request.method == "HEAD":
        return web.Response(headers={"Content-Length": str(found[1].size)})
    mode = request.app[REGISTRY].knobs.redirect
    host = request.url.host or "127.0.0.1"
    other = "localhost" if host != "localhost" else "127.0.0.1"
    cdn = request.url.with_host(other if mode in ("cdn", "302") else host)
    cdn = cdn.with_path(f"/_sim/cdn/{found[0]}").with_query(None)
    if mode == "cdn":
        raise web.HTTPTemporaryRedirect(cdn)
    if mode == "302":
        raise web.HTTPFound(cdn)
    return await _serve(request, found[0], found[1], None, str(cdn) if mode == "location" else "")


@routes.get("/_sim/cdn/{digest}")
async def get_cdn(request: web.Request) -> web.StreamResponse:
    found = _blob(request)
    if isinstance(found, web.Response):
        return found
    digest, blob = found
    header = request.headers.get("Range")
    span = None
    if header is not None and not request.app[REGISTRY].knobs.ignore_range:
        m = _RANGE.fullmatch(header.strip())
        if m is None or int(m.group(1)) >= blob.size:
            raise SimError(416, f"bad range {header!r}")
        last = int(m.group(2)) if m.group(2) else blob.size - 1
        span = (int(m.group(1)), min(last, blob.size - 1) + 1)
    return await _serve(request, digest, blob, span, "")


async def _serve(
    request: web.Request, digest: str, blob: Blob, span: tuple[int, int] | None, location: str
) -> web.StreamResponse:
    reg = request.app[REGISTRY]
    start, end = span or (0, blob.size)
    headers = {"Content-Length": str(end - start), "Content-Type": "application/octet-stream"}
    if location:
        headers["Location"] = location
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    began, sent = loop.time(), 0
    for chunk in content(blob, start, end, corrupt=digest in reg.knobs.corrupt):
        try:
            await response.write(chunk)
        except ConnectionError:
            break
        sent += len(chunk)
        reg.served_bytes += len(chunk)
        rate = reg.knobs.bandwidth_bps
        if rate > 0:
            ahead = began + sent / rate - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return response


@routes.get("/_sim/registry")
async def get_knobs(request: web.Request) -> web.StreamResponse:
    reg = request.app[REGISTRY]
    return reply(msgspec.structs.asdict(reg.knobs) | {"served_bytes": reg.served_bytes})


@routes.post("/_sim/registry")
async def set_knobs(request: web.Request) -> web.StreamResponse:
    """Replace the registry's knobs (fields left out take their defaults)."""
    knobs = await decode(request, RegistryKnobs)
    if knobs.redirect not in ("cdn", "location", "plain", "302"):
        raise SimError(
            400, f'redirect: expected cdn, location, plain or 302, got "{knobs.redirect}"'
        )
    if any(_DIGEST.fullmatch(d) is None for d in knobs.corrupt):
        raise SimError(400, "corrupt: expected digests sha256:<64 hex>")
    request.app[REGISTRY].knobs = knobs
    return await get_knobs(request)
