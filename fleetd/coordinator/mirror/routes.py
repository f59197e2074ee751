"""The registry API a stock Ollama pulls from (``/v2/...``, no token, read-only) and the
admin's view of the mirror (``GET /api/mirror``).

A blob ``GET`` without ``Range`` answers 200 with a ``Location`` header naming itself (what
Ollama needs to take this URL as the blob's direct URL; it then closes the connection and
asks for parts) and the body for any other client. ``Range`` answers 206 with exactly the
slice: from disk at once for what has arrived, waiting for the rest while upstream brings
it. Bytes are streamed as they arrive, before the blob's sha256 is known: a blob failing the
check is discarded (never stored as complete) and a client's own check (Ollama's) rejects
it naming the digest.
"""

from __future__ import annotations

import asyncio
import os
import re

from aiohttp import web

from fleetd.coordinator.auth import require_admin
from fleetd.coordinator.mirror.cache import BadName, check_digest, check_repo
from fleetd.coordinator.mirror.fetcher import Flight
from fleetd.coordinator.mirror.service import MANIFEST_TYPE, MIRROR, Mirror, UpstreamError
from fleetd.core.errors import ApiError, bad_request
from fleetd.core.http import json_response

routes = web.RouteTableDef()

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
SIZE_WAIT_S = 60.0
SERVE_CHUNK = 256 * 1024
"""Bytes read and written at a time per connection: memory grows with connections (Ollama
opens 16 per blob), never with blob size."""


def _mirror(request: web.Request) -> Mirror:
    mirror = request.app[MIRROR]
    if not mirror.enabled:
        raise ApiError(404, "mirror_disabled", "the registry mirror is off ([coordinator.mirror])")
    return mirror


def _repo(request: web.Request) -> tuple[str, str]:
    ns, model = request.match_info["namespace"], request.match_info["model"]
    try:
        check_repo(ns, model)
    except BadName as err:
        raise bad_request(str(err), code="invalid_name") from None
    return ns, model


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``[start, end)`` of a single ``bytes=`` range; ValueError when malformed or outside."""
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise ValueError(f"malformed Range {header!r} (expected bytes=START-[END])")
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise ValueError(f"Range {header!r} selects nothing")
        return max(0, size - n), size
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size or end <= start:
        raise ValueError(f"Range {header!r} is outside the blob's {size} bytes")
    return start, min(end, size)


@routes.get(r"/v2/{namespace}/{model}/manifests/{tag}")
async def get_manifest(request: web.Request) -> web.Response:
    mirror = _mirror(request)
    ns, model = _repo(request)
    tag = request.match_info["tag"]
    try:
        check_repo(ns, model, tag)
    except BadName as err:
        raise bad_request(str(err), code="invalid_name") from None
    try:
        body = await mirror.manifest(ns, model, tag)
    except UpstreamError as err:
        code = "manifest_unknown" if err.status == 404 else "upstream_unavailable"
        raise ApiError(err.status, code, str(err)) from None
    if request.method == "HEAD":
        return web.Response(
            headers={"Content-Length": str(len(body)), "Content-Type": MANIFEST_TYPE}
        )
    return web.Response(body=body, headers={"Content-Type": MANIFEST_TYPE})


@routes.get(r"/v2/{namespace}/{model}/blobs/{digest}")
async def get_blob(request: web.Request) -> web.StreamResponse:
    mirror = _mirror(request)
    ns, model = _repo(request)
    try:
        digest = check_digest(request.match_info["digest"])
    except BadName as err:
        raise bad_request(str(err), code="invalid_digest") from None
    found = await mirror.locate(f"{ns}/{model}", digest)
    flight = found if isinstance(found, Flight) else None
    if flight is not None:
        try:
            await asyncio.wait_for(flight.sized.wait(), SIZE_WAIT_S)
        except asyncio.TimeoutError:
            raise ApiError(504, "upstream_timeout", f"upstream did not start {digest}") from None
        if flight.error is not None and flight.size is None:
            code = "blob_unknown" if flight.error_status == 404 else "upstream_unavailable"
            raise ApiError(flight.error_status, code, flight.error)
    size = found if isinstance(found, int) else flight.size if flight else None
    assert size is not None
    headers = {
        "Docker-Content-Digest": digest,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Length": str(size)})
    span = (0, size)
    header = request.headers.get("Range")
    if header is not None:
        try:
            span = parse_range(header, size)
        except ValueError as err:
            raise ApiError(
                416, "bad_range", str(err), headers={"Content-Range": f"bytes */{size}"}
            ) from None
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
    else:
        headers["Location"] = str(request.url)
    headers["Content-Length"] = str(span[1] - span[0])
    response = web.StreamResponse(status=206 if header is not None else 200, headers=headers)
    mirror.cache.pin(digest)
    try:
        await response.prepare(request)
        await _stream(request, response, mirror, digest, flight, span)
    finally:
        mirror.cache.unpin(digest)
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    mirror: Mirror,
    digest: str,
    flight: Flight | None,
    span: tuple[int, int],
) -> None:
    pos, end = span
    fd: int | None = None
    try:
        while pos < end:
            if flight is not None and flight.have <= pos:
                await flight.wait_beyond(pos)
                if flight.have <= pos:  # the flight ended short: cut, never pretend
                    if request.transport is not None:
                        request.transport.abort()
                    return
            if fd is None:
                fd = await asyncio.to_thread(_open, mirror, digest, flight is not None)
            avail = flight.have if flight is not None else end
            n = min(SERVE_CHUNK, end - pos, avail - pos)
            chunk = await asyncio.to_thread(os.pread, fd, n, pos)
            if not chunk:
                raise ConnectionResetError(f"{digest}: file shorter than expected")
            await response.write(chunk)
            mirror.served(len(chunk))
            pos += len(chunk)
    except ConnectionError:
        return  # the client left (Ollama closes the Location probe at once)
    except FileNotFoundError:  # its fetch failed the check and was discarded: cut, as above
        if request.transport is not None:
            request.transport.abort()
    finally:
        if fd is not None:
            await asyncio.to_thread(os.close, fd)


def _open(mirror: Mirror, digest: str, arriving: bool) -> int:
    """The blob's file; one arriving is read from its partial file, which may be renamed into
    place while we read (same inode) or just before we open it."""
    if arriving:
        try:
            return os.open(mirror.cache.partial_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            pass
    return os.open(mirror.cache.blob_path(digest), os.O_RDONLY)


@routes.get("/api/mirror")
async def mirror_status(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(await request.app[MIRROR].status())
