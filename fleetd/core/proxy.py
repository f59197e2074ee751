"""Streaming pass-through of one HTTP exchange: request bytes out, response bytes back.

Bodies are forwarded as bytes, never re-encoded; a response without a length (SSE, NDJSON)
is written to the client chunk by chunk as it arrives. A stream that breaks midway ends with
an error event in the stream's own format, so the client sees an error instead of a hang.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Protocol

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from fleetd.core.errors import ApiError

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Also not forwarded: what the next hop recomputes (host, length), the caller's credentials
# (they are for this hop only), and compression (the shared session decompresses replies).
_SKIP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "cookie",
    "accept-encoding",
    "expect",
}
_SKIP_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}

TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=5, sock_read=None)
"""Generation may run for minutes before the first byte; only the TCP connect is bounded."""

UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)

_encoder = msgspec.json.Encoder()


def _filtered(
    headers: CIMultiDictProxy[str], skip: frozenset[str], extra: Iterable[tuple[str, str]] = ()
) -> CIMultiDict[str]:
    out = headers.copy()
    conn = headers.get("Connection")
    if conn and conn.lower() not in ("keep-alive", "close"):
        skip = skip | {t.strip() for t in conn.split(",")}
    for name in skip:
        if name in out:
            del out[name]
    out.extend(extra)
    return out


def request_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones and this hop's credentials."""
    return _filtered(headers, _SKIP_REQUEST)


def response_headers(
    headers: CIMultiDictProxy[str], extra: Iterable[tuple[str, str]] = ()
) -> CIMultiDict[str]:
    return _filtered(headers, _SKIP_RESPONSE, extra)


def stream_error(content_type: str, message: str, code: str = "upstream_failed") -> bytes:
    """One error event in the stream's format: SSE for OpenAI clients, NDJSON for Ollama's."""
    if content_type == "text/event-stream":
        err = {"message": message, "type": "api_error", "param": None, "code": code}
        return b"data: " + _encoder.encode({"error": err}) + b"\n\n"
    return _encoder.encode({"error": message, "code": code}) + b"\n"


class ShuttingDown(aiohttp.ClientConnectionError):
    """Cuts a relayed reply because this process is stopping; the client is told exactly that
    (code ``shutting_down``) rather than that the upstream failed."""


def shutting_down(message: str) -> ApiError:
    return ApiError(503, "shutting_down", message, headers={"Retry-After": "1"})


class Flight:
    """One request relayed to an upstream, so that it can be ended from outside (its agent
    went offline, this process is stopping): a hung upstream must not hold its client."""

    __slots__ = ("aborted", "task", "upstream", "why")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.upstream: aiohttp.ClientResponse | None = None
        self.aborted = False
        self.why = ""

    def abort(self, error: aiohttp.ClientConnectionError) -> None:
        if self.upstream is None:
            # Still waiting for the reply's head: nothing has reached the client, so the
            # task is cancelled and its handler answers (``aborted`` tells it why).
            if self.task is not None and not self.aborted:
                self.aborted = True
                self.why = str(error)
                self.task.cancel()
        elif not self.upstream.content.is_eof():
            # Mid-reply: the relay sees a broken upstream and tells the client ``error``.
            self.upstream.content.set_exception(error)


def uncancel(task: asyncio.Task[object] | None) -> None:
    """Undo our own ``cancel()`` once handled, so later timeouts in the task still work."""
    if task is not None and sys.version_info >= (3, 11):
        task.uncancel()


OK, BROKEN, CLIENT_GONE = "ok", "broken", "client_gone"


class Meter(Protocol):
    """Sees a relayed reply's bytes as they pass (the coordinator counts tokens with it)."""

    def body(self, data: bytes) -> None: ...
    def chunk(self, data: bytes) -> None: ...
    def broken(self) -> None: ...


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    what: str,
    extra_headers: Iterable[tuple[str, str]] = (),
    meter: Meter | None = None,
) -> tuple[web.StreamResponse, str]:
    """Send ``upstream``'s status, headers and body to the client; ``what`` names the upstream
    in error messages, and ``meter`` (if any) sees the reply's bytes. Returns the response and
    how it went: ``OK``, ``BROKEN`` (the stream broke and the client got an error event) or
    ``CLIENT_GONE``.

    A reply with a length is read whole and sent in one piece; one without (a stream) is
    written chunk by chunk as it arrives. Unless the outcome is ``OK`` the caller must close
    ``upstream``, so that a generation nobody reads stops.
    """
    headers = response_headers(upstream.headers, extra_headers)
    if upstream.content_length is not None:
        try:
            body = await upstream.read()
        except ShuttingDown as e:
            raise shutting_down(str(e)) from None
        except UPSTREAM_ERRORS as e:
            raise ApiError(
                502, "upstream_failed", f"{what} failed mid-reply: {e or type(e).__name__}"
            ) from None
        if meter is not None:
            meter.body(body)
        return web.Response(status=upstream.status, body=body, headers=headers), OK
    out = web.StreamResponse(status=upstream.status, headers=headers)
    content = upstream.content
    tail = b"\n"
    try:
        await out.prepare(request)
        while True:
            try:
                chunk = await content.readany()
            except UPSTREAM_ERRORS as e:
                sep = b"" if tail == b"\n" else b"\n\n"
                if isinstance(e, ShuttingDown):
                    error = stream_error(upstream.content_type, str(e), "shutting_down")
                else:
                    message = f"{what} failed mid-stream: {e or type(e).__name__}"
                    error = stream_error(upstream.content_type, message)
                if meter is not None:
                    meter.broken()
                await out.write(sep + error)
                await out.write_eof()
                return out, BROKEN
            if not chunk:
                break
            await out.write(chunk)
            if meter is not None:
                meter.chunk(chunk)
            tail = chunk[-1:]
        await out.write_eof()
    except ConnectionResetError:
        return out, CLIENT_GONE
    return out, OK
