"""``GET /api/events``: task and agent changes as Server-Sent Events."""

from __future__ import annotations

from aiohttp import web

from fleetd.coordinator.auth import require_admin
from fleetd.core.events import EVENTS

routes = web.RouteTableDef()


@routes.get("/api/events")
async def stream_events(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)

    def hang_up() -> None:
        if request.transport is not None:
            request.transport.abort()  # close() would wait to send what it never will

    # Subscribed before the first byte goes out: a client that has read the retry line
    # misses no change made after that.
    messages = request.app[EVENTS].subscribe(on_drop=hang_up)
    try:
        await resp.write(b"retry: 2000\n\n")
        async for chunk in messages.batches():
            await resp.write(chunk)
    except ConnectionResetError:
        pass
    finally:
        messages.close()
    return resp
