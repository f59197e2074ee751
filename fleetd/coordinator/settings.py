"""The coordinator's validated config section under an AppKey, for routes to read."""

from __future__ import annotations

from aiohttp import web

from fleetd.config import CoordinatorConfig

SETTINGS = web.AppKey("settings", CoordinatorConfig)
