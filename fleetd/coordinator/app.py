"""Builds the coordinator's aiohttp Application: resources in cleanup_ctx order, one route table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from fleetd.config import Config, expand
from fleetd.coordinator import (
    agents_api,
    catalog_api,
    dashboard,
    events_api,
    fleet_api,
    history_api,
    inference_api,
    keys_api,
    loops,
    model_delete,
    tasks_api,
)
from fleetd.coordinator.auth import TOKENS, Tokens
from fleetd.coordinator.cluster import cluster_ctx
from fleetd.coordinator.distribution import run_distribution
from fleetd.coordinator.gateway import GATEWAY, gateway_ctx
from fleetd.coordinator.history import history_ctx
from fleetd.coordinator.inventory import inventory_ctx
from fleetd.coordinator.metrics import METRICS, Metrics, metrics_middleware, serve_metrics
from fleetd.coordinator.mirror import routes as mirror_routes
from fleetd.coordinator.mirror.service import mirror_ctx
from fleetd.coordinator.model_sets import model_sets_ctx
from fleetd.coordinator.registry import REGISTRY, Registry, run_registry
from fleetd.coordinator.settings import SETTINGS
from fleetd.coordinator.usage import accounts_ctx
from fleetd.coordinator.vram import sizes_ctx
from fleetd.core import tokens
from fleetd.core.errors import MAX_BODY_BYTES, StartupError, error_middleware
from fleetd.core.events import EVENTS, EventBus
from fleetd.core.http import client_ctx
from fleetd.core.plugins import load_plugin
from fleetd.core.server import SHUTDOWN_TIMEOUT_S
from fleetd.core.store import STORE, SqliteStore, Store
from fleetd.core.throttle import THROTTLE, Throttle, run_throttle

log = logging.getLogger("fleetd.coordinator")


def _prepare_data_dir(path: Path) -> None:
    try:
        tokens.private_dir(path)
    except OSError as e:
        raise StartupError(f"coordinator.data_dir = {str(path)!r}: {e.strerror}") from None


async def build_app(config: Config) -> web.Application:
    """Everything that can fail at start-up (data_dir, tokens, plugins, database) fails here."""
    c = config.coordinator
    data_dir = expand(c.data_dir)
    await asyncio.to_thread(_prepare_data_dir, data_dir)
    admin = await asyncio.to_thread(
        tokens.load_or_create, data_dir, "admin_token", config.secrets.admin_token, "admin token"
    )
    agent = await asyncio.to_thread(
        tokens.load_or_create, data_dir, "agent_token", config.secrets.agent_token, "agent token"
    )
    tokens.check_tokens(admin, agent, config.secrets.api_keys)
    store: Store
    if c.database_url:
        from fleetd.core.pgstore import open_pg_store

        store = await open_pg_store(c.database_url, "coordinator.database_url")
    else:
        sqlite = SqliteStore(data_dir / "fleetd.db")
        try:
            await sqlite.open()
        except Exception as e:
            raise StartupError(
                f"coordinator.data_dir: cannot open database {sqlite.path}: {e}"
            ) from e
        store = sqlite

    balancer = load_plugin("fleetd.balancer", c.balancer, "coordinator.balancer")
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, loops.loop_guard],
        client_max_size=MAX_BODY_BYTES,
        # A client that disconnects cancels its handler, and so its request to the agent.
        handler_args={"handler_cancellation": True},
    )
    app[SETTINGS] = c
    app[loops.SELF_ID] = self_id = loops.new_instance_id()
    app.on_response_prepare.append(loops.stamp)
    app[TOKENS] = Tokens(admin=admin, agent=agent, api_keys=config.secrets.api_keys)
    app[STORE] = store
    app[THROTTLE] = Throttle()
    app[EVENTS] = EventBus()
    app[METRICS] = Metrics()
    app[REGISTRY] = Registry(store, app[EVENTS], c.heartbeat_timeout_s)
    app[dashboard.ASSETS] = await dashboard.load_assets()

    async def close_store(app: web.Application) -> AsyncIterator[None]:
        yield
        await store.close()

    async def end_streams(app: web.Application) -> None:
        app[EVENTS].close_all()
        await app[GATEWAY].stop(SHUTDOWN_TIMEOUT_S)

    app.cleanup_ctx.extend(
        [
            close_store,
            model_sets_ctx(c),
            client_ctx(headers={loops.HEADER: self_id}),
            sizes_ctx,
            run_registry,
            inventory_ctx,
            run_distribution,
        ]
    )
    app.cleanup_ctx.append(run_throttle)
    app.cleanup_ctx.append(gateway_ctx(balancer))
    app.cleanup_ctx.append(catalog_api.catalog_ctx(c))
    app.cleanup_ctx.append(fleet_api.follow_model_sets)
    app.cleanup_ctx.append(accounts_ctx)
    app.cleanup_ctx.append(history_ctx)
    app.cleanup_ctx.append(mirror_ctx)
    app.cleanup_ctx.append(cluster_ctx)
    app.on_shutdown.append(end_streams)
    app.router.add_routes(agents_api.routes)
    app.router.add_routes(events_api.routes)
    app.router.add_routes(tasks_api.routes)
    app.router.add_routes(fleet_api.routes)
    app.router.add_routes(model_delete.routes)
    app.router.add_routes(dashboard.routes)
    app.router.add_routes(catalog_api.routes)
    app.router.add_routes(inference_api.routes)
    app.router.add_routes(keys_api.routes)
    app.router.add_routes(history_api.routes)
    app.router.add_routes(mirror_routes.routes)
    app.router.add_get("/metrics", serve_metrics)
    return app
