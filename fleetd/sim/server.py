"""Assembles the simulator's aiohttp application: routes, error shapes, the ``down``
switch and the lifecycle (restore state, save it periodically, stop downloads on exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from fleetd.sim import control, inference, library, manage, openai_compat, registry
from fleetd.sim.context import SIM, Sim, reply
from fleetd.sim.options import SimOptions, check
from fleetd.sim.scheduler import SimError

log = logging.getLogger(__name__)

SAVE_INTERVAL_S = 0.5


@web.middleware
async def _connections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Track requests in flight so ``down`` and shutdown can cut them; while ``down``, drop
    every new connection the way a dead server's port would. ``/_sim`` stays reachable."""
    sim, transport = request.app[SIM], request.transport
    if request.path.startswith("/_sim/") or transport is None:
        return await handler(request)
    if sim.knobs.down:
        transport.abort()
        raise web.HTTPServiceUnavailable()
    sim.in_flight.add(transport)
    try:
        return await handler(request)
    finally:
        sim.in_flight.discard(transport)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Ollama's error bodies: ``{"error": "..."}``, or OpenAI's object under /v1."""
    try:
        return await handler(request)
    except SimError as exc:
        status, message = exc.status, exc.message
    except web.HTTPException:
        raise
    except ConnectionError:
        # The client left before its answer could start (aiohttp's ClientConnectionResetError
        # from prepare()): nobody to answer, nothing wrong here, so no traceback. The response
        # returned is never sent.
        log.debug("sim-ollama: client left %s %s early", request.method, request.path)
        return web.Response(status=499)
    except Exception:
        log.exception("sim-ollama: unexpected error in %s %s", request.method, request.path)
        status, message = 500, "internal error in sim-ollama"
    if request.path.startswith("/v1/"):
        return reply(openai_compat.error_body(status, message), status)
    return reply({"error": message}, status)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Restore the models directory; with a state_dir, keep saving it until shutdown."""
    sim = app[SIM]
    await sim.store.load(sim.options.preinstalled)
    if sim.options.state_dir is None:
        yield
        await asyncio.to_thread(shutil.rmtree, sim.blob_dir, True)
        return
    saver = asyncio.create_task(_save_periodically(sim), name="sim-ollama saver")
    yield
    saver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await saver
    await sim.store.save()


async def _save_periodically(sim: Sim) -> None:
    while True:
        await asyncio.sleep(SAVE_INTERVAL_S)
        await sim.store.save()


async def _cut_connections(app: web.Application) -> None:
    """On shutdown, cut requests in flight (streams above all) so the runner need not wait."""
    sim = app[SIM]
    sim.cut_connections()
    await sim.puller.stop()
    await sim.fetcher.stop()


def build_app(options: SimOptions) -> web.Application:
    """A simulated Ollama server; raises ValueError naming an option that cannot work."""
    check(options)
    app = web.Application(middlewares=[_connections, _errors])
    app[SIM] = Sim(options)
    app[registry.REGISTRY] = registry.Registry()
    tables = (manage.routes, registry.routes, inference.routes, openai_compat.routes)
    for table in (*tables, control.routes, library.routes):
        app.router.add_routes(table)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_cut_connections)
    return app
