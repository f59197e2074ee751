"""One registry look-up before a distribution creates tasks, shared by ``/api/pull`` and
``POST /api/distributions``: a model the registry does not have is refused at once instead of
failing on every agent, and a registry that cannot be asked does not stop the order."""

from __future__ import annotations

import logging

from aiohttp import web

from fleetd.coordinator.settings import SETTINGS
from fleetd.core.catalog import CatalogError, CatalogNotFound, manifest_size
from fleetd.core.errors import ApiError
from fleetd.core.http import CLIENT

log = logging.getLogger("fleetd.distribution")

REGISTRY_UNREACHABLE = "registry_unreachable"


async def check_registry(app: web.Application, model: str) -> dict[str, str] | None:
    """None when the registry has ``model``; a warning (code ``registry_unreachable``) when it
    could not be asked or gave no registry's answer; ``ApiError`` 404 ``model_not_in_registry``
    when it answered no (404 with ``MANIFEST_UNKNOWN`` or ``NAME_UNKNOWN``).

    The coordinator asks its own ``registry_url``; agents pull from theirs, normally the same.
    """
    registry = app[SETTINGS].registry_url
    try:
        await manifest_size(app[CLIENT], registry, model, sure=True)
    except CatalogNotFound:
        # Ollama's own words first, so clients that match on them still do.
        raise ApiError(
            404,
            "model_not_in_registry",
            f"pull model manifest: file does not exist: the registry {registry} has no "
            f"{model}; check the name and tag (GET /api/models/catalog lists the library)",
        ) from None
    except CatalogError as e:
        log.warning("cannot check %s in the registry, ordering it anyway: %s", model, e)
        return {
            "code": REGISTRY_UNREACHABLE,
            "message": f"could not check that the registry has {model} ({e}); "
            "the download was ordered anyway",
        }
    return None
