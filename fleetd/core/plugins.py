"""Entry-point discovery: one loader for built-in and third-party plugins alike.

Groups: ``fleetd.gpu`` (GPU probes), ``fleetd.balancer`` (load balancing), ``fleetd.catalog``
(model catalog). Config names a plugin by its entry-point name.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fleetd.core.errors import StartupError

log = logging.getLogger("fleetd.plugins")

GROUPS = ("fleetd.gpu", "fleetd.balancer", "fleetd.catalog")


def available(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def load_plugin(group: str, name: str, key: str) -> Any:
    """The object an entry point names; ``key`` is the config key that chose it (for errors)."""
    eps = available(group)
    ep = eps.get(name)
    if ep is None:
        choices = ", ".join(sorted(eps)) or "none"
        raise StartupError(
            f"{key} = {name!r}: no plugin of that name in {group} (installed: {choices})"
        )
    try:
        obj = ep.load()
    except Exception as e:
        raise StartupError(f"{key} = {name!r}: plugin {ep.value} failed to import: {e}") from e
    dist = ep.dist
    log.info(
        "plugin %s %s from %s %s",
        group,
        name,
        dist.name if dist else "?",
        dist.version if dist else "",
    )
    return obj
