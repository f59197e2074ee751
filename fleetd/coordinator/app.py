"""Builds the coordinator's aiohttp Application: checks, resources in cleanup_ctx order, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from fleetd.config import Config, CoordinatorConfig, expand
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
from fleetd.coordinator.metrics import METRICS, Metrics, serve_metrics
from fleetd.coordinator.middleware import coordinator_middleware
from fleetd.coordinator.mirror import routes as mirror_routes
from fleetd.coordinator.mirror.service import mirror_ctx
from fleetd.coordinator.model_sets import model_sets_ctx
from fleetd.coordinator.registry import run_registry
from fleetd.coordinator.settings import SETTINGS
from fleetd.coordinator.token_sync import tokens_ctx
from fleetd.coordinator.usage import accounts_ctx
from fleetd.coordinator.vram import sizes_ctx
from fleetd.core import tokens
from fleetd.core.errors import MAX_BODY_BYTES, StartupError
from fleetd.core.events import EVENTS, events_ctx
from fleetd.core.http import client_ctx
from fleetd.core.plugins import load_plugin
from fleetd.core.server import SHUTDOWN_TIMEOUT_S
from fleetd.core.store import STORE, SqliteStore, Store
from fleetd.core.throttle import THROTTLE, Throttle, run_throttle

log = logging.getLogger("fleetd.coordinator")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def _prepare_data_dir(path: Path) -> None:
    try:
        tokens.private_dir(path)
    except OSError as e:
        raise StartupError(f"coordinator.data_dir = {str(path)!r}: {e.strerror}") from None


async def open_store(c: CoordinatorConfig, data_dir: Path) -> Store:
    """PostgreSQL when ``database_url`` is set, else SQLite in ``data_dir``; a ``StartupError``
    of one line when it cannot be opened."""
    if c.database_url:
        from fleetd.core.pgstore import open_pg_store

        return await open_pg_store(c.database_url, "coordinator.database_url")
    sqlite = SqliteStore(data_dir / "fleetd.db")
    try:
        await sqlite.open()
    except Exception as e:
        raise StartupError(f"coordinator.data_dir: cannot open database {sqlite.path}: {e}") from e
    return sqlite


def store_ctx(c: CoordinatorConfig, data_dir: Path) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[STORE] = await open_store(c, data_dir)
        try:
            yield
        finally:
            await store.close()

    return ctx


async def build_app(config: Config) -> web.Application:
    """Checks first, then lays out the resources; nothing is opened here.

    Plugins are loaded (so validated) and tokens given equal refused before anything is
    written, so a misspelt name leaves no trace; then ``data_dir``. Every resource opens in
    ``cleanup_ctx``, in dependency order — store → tokens (files, or the database's with
    PostgreSQL) → event bus → HTTP client → throttle → registry → inventory → distribution →
    gateway → catalog → usage accounts → history → mirror → cluster — and
    closes in reverse; when one fails to open, those before it close again
    (``core/server.serve`` cleans up a failed start) and the error is one line.
    """
    c = config.coordinator
    balancer = load_plugin("fleetd.balancer", c.balancer, "coordinator.balancer")
    catalog = load_plugin("fleetd.catalog", c.catalog, "coordinator.catalog")
    tokens.refuse_same(config.secrets.admin_token, config.secrets.agent_token)
    data_dir = expand(c.data_dir)
    await asyncio.to_thread(_prepare_data_dir, data_dir)
    app = web.Application(
        middlewares=[coordinator_middleware],
        client_max_size=MAX_BODY_BYTES,
        # A client that disconnects cancels its handler, and so its request to the agent.
        handler_args={"handler_cancellation": True},
    )
    app[SETTINGS] = c
    app[loops.SELF_ID] = self_id = loops.new_instance_id()
    app.on_response_prepare.append(loops.stamp)
    app[TOKENS] = Tokens(admin="", agent="", api_keys=config.secrets.api_keys)  # tokens_ctx
    app[THROTTLE] = Throttle()
    app[METRICS] = Metrics()
    app[dashboard.ASSETS] = await dashboard.load_assets()

    async def end_streams(app: web.Application) -> None:
        app[EVENTS].close_all()
        await app[GATEWAY].stop(SHUTDOWN_TIMEOUT_S)

    app.cleanup_ctx.extend(
        [
            store_ctx(c, data_dir),
            tokens_ctx(config.secrets, data_dir),
            model_sets_ctx(c),
            events_ctx,
            client_ctx(headers={loops.HEADER: self_id}),
            sizes_ctx,
            run_throttle,
            run_registry,
            inventory_ctx,
            run_distribution,
            gateway_ctx(balancer),
            catalog_api.catalog_ctx(c, catalog),
            fleet_api.follow_model_sets,
            accounts_ctx,
            history_ctx,
            mirror_ctx,
            cluster_ctx,
        ]
    )
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
