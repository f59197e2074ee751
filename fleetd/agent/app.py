"""Builds the agent's aiohttp Application: one port for the coordinator and for clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from fleetd.agent import inference_api, orders_api, status_api
from fleetd.agent.downloads import run_downloads
from fleetd.agent.link import GPU_PROBE, default_name, run_link
from fleetd.agent.residency import run_residency
from fleetd.agent.runtime import RUNTIME, Runtime, load_identity
from fleetd.config import Config, expand
from fleetd.core import tokens
from fleetd.core.errors import MAX_BODY_BYTES, StartupError, error_middleware
from fleetd.core.http import client_ctx
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
    rt = Runtime(a, agent_token, data_dir)
    rt.instance_id = instance_id
    rt.supported_models = supported
    rt.name = a.name or default_name()

    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=MAX_BODY_BYTES,
        # A client that disconnects cancels its handler, and so its request to Ollama.
        handler_args={"handler_cancellation": True},
    )
    app[RUNTIME] = rt
    app[THROTTLE] = Throttle()
    app[GPU_PROBE] = probe_cls(a)
    app.cleanup_ctx.extend([client_ctx(), run_link, run_downloads, run_residency])
    app.cleanup_ctx.append(inference_api.run_upstreams)
    app.cleanup_ctx.append(run_throttle)
    app.on_shutdown.append(inference_api.stop_serving)
    app.router.add_routes(status_api.routes)
    app.router.add_routes(orders_api.routes)
    app.router.add_routes(inference_api.routes)
    return app


def advertise(rt: Runtime, bound_url: str) -> None:
    """The URL the coordinator will use: configured, or derived from where we listen."""
    rt.url = rt.config.advertise_url or bound_url
    rt.bound.set()
