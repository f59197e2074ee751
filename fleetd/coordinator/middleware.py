"""The one middleware every coordinator request passes: the loop check, JSON error answers
and the request counter. One layer instead of three: aiohttp adds a layer of its own when
an app has any middleware, and each costs a coroutine call per request, which 1,000
heartbeats a second pay in full."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from fleetd.coordinator.loops import HEADER, refuse_loop
from fleetd.coordinator.metrics import METRICS
from fleetd.core.errors import error_reply

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT_CLOSED = 499
"""nginx's status for a client that closed the connection before its answer was done: a
closed dashboard tab or an abandoned stream is not a server fault, so never counted as 5xx."""


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def coordinator_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        try:
            if HEADER in request.headers:  # sent by a coordinator, maybe this one
                refuse_loop(request)
            resp = await handler(request)
        except Exception as e:
            resp = error_reply(request, e)
        status = resp.status
        return resp
    except web.HTTPException as e:  # a redirect, raised again by error_reply
        status = e.status
        raise
    except asyncio.CancelledError:
        # handler_cancellation: the client hanging up cancels its handler.
        if _client_gone(request):
            status = CLIENT_CLOSED
        raise
    finally:
        info = request.match_info.route.resource
        request.app[METRICS].count_request(
            info.canonical if info is not None else "unmatched", status
        )
