"""Builds the agent's aiohttp Application: one port for the coordinator and for clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from fleetd.agent import inference_api, orders_api, status_api
from fleetd.agent.coordinators import Coordinators
from fleetd.agent.download_queue import DOWNLOADS, DownloadQueue
from fleetd.agent.link import Link, default_name
from fleetd.agent.ollamas import OLLAMAS, LocalOllamas
from fleetd.agent.progress import Reporter
from fleetd.agent.puller import Puller
from fleetd.agent.readiness import READINESS, Readiness
from fleetd.agent.residency import Residency
from fleetd.agent.runtime import (
    IDENTITY,
    IN_FLIGHT,
    STOP,
    SUPPORTED,
    CoordinatorMirror,
    Identity,
    InFlight,
    Stop,
    SupportedModels,
    load_identity,
)
from fleetd.config import AgentConfig, Config, expand
from fleetd.core import tokens
from fleetd.core.background import background
from fleetd.core.errors import MAX_BODY_BYTES, StartupError, error_middleware
from fleetd.core.gpu import GpuProbe
from fleetd.core.http import CLIENT, client_ctx
from fleetd.core.plugins import load_plugin
from fleetd.core.throttle import THROTTLE, Throttle, run_throttle


def _identity(data_dir: Path) -> tuple[str, list[str]]:
    try:
        return load_identity(data_dir)
    except OSError as e:
        raise StartupError(f"agent.data_dir = {str(data_dir)!r}: {e.strerror or e}") from None


async def build_app(config: Config) -> web.Application:
    a = config.agent
    data_dir = expand(a.data_dir)
    instance_id, supported = await asyncio.to_thread(_identity, data_dir)
    agent_token = await asyncio.to_thread(
        tokens.read_existing, data_dir, "agent_token", config.secrets.agent_token
    )
    if agent_token is None:
        raise StartupError(
            "agent token missing: set FLEETD_AGENT_TOKEN (the coordinator's is in its "
            f"data_dir/agent_token) or write it to {data_dir / 'agent_token'}"
        )
    tokens.check_tokens(config.secrets.admin_token, agent_token)
    probe_cls = load_plugin("fleetd.gpu", a.gpu.probe, "agent.gpu.probe")

    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=MAX_BODY_BYTES,
        # A client that disconnects cancels its handler, and so its request to Ollama.
        handler_args={"handler_cancellation": True},
    )
    app[IDENTITY] = Identity(instance_id, a.name or default_name(), agent_token, a.advertise_url)
    app[SUPPORTED] = SupportedModels(data_dir, supported)
    app[IN_FLIGHT] = InFlight()
    app[STOP] = Stop()
    app[THROTTLE] = Throttle()
    # The agent's parts start after the session they use and before the token throttle's
    # summary; aiohttp closes the entries in the reverse order.
    app.cleanup_ctx.extend([client_ctx(), _parts(a, probe_cls(a), data_dir), run_throttle])
    app.on_shutdown.append(inference_api.stop_serving)
    app.router.add_routes(status_api.routes)
    app.router.add_routes(orders_api.routes)
    app.router.add_routes(inference_api.routes)
    return app


def _parts(
    a: AgentConfig, probe: GpuProbe, data_dir: Path
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        """The agent's parts, started in this order and stopped in the reverse one:

        1. the local Ollama servers and the readiness computed from them;
        2. the download queue: read from disk, its pulls resumed, saved on the way out
           after its pulls stopped;
        3. progress reports to the coordinator;
        4. the residency keeper;
        5. the link to the coordinator, last: it announces an agent whose parts all run,
           and on the way down stops heartbeating before anything else stops.

        A part that fails to start stops the ones started before it.
        """
        session = app[CLIENT]
        identity, supported, stop = app[IDENTITY], app[SUPPORTED], app[STOP]
        mirror = CoordinatorMirror()
        ollamas = app[OLLAMAS] = LocalOllamas(a, session)
        readiness = app[READINESS] = Readiness(supported, ollamas)
        puller = Puller(a, session, ollamas, supported, mirror)
        dl = app[DOWNLOADS] = DownloadQueue(a, data_dir / "downloads.json", puller)
        coordinators = Coordinators(a.coordinator_urls())
        reporter = Reporter(session, identity, coordinators, dl, ollamas)
        residency = Residency(a, supported, ollamas, readiness)
        link = Link(
            a,
            session,
            probe,
            identity=identity,
            supported=supported,
            ollamas=ollamas,
            readiness=readiness,
            in_flight=app[IN_FLIGHT],
            mirror=mirror,
            stop=stop,
            coordinators=coordinators,
        )
        async with contextlib.AsyncExitStack() as parts:
            await parts.enter_async_context(dl.opened())
            await parts.enter_async_context(background(reporter.run(), "download-reporter"))
            await parts.enter_async_context(background(residency.run(), "residency"))
            await parts.enter_async_context(background(link.run(), "agent-link"))
            yield

    return ctx


def advertise(app: web.Application, bound_url: str) -> None:
    """Once the agent listens: the URL the coordinator will use is known."""
    app[IDENTITY].advertise(bound_url)
