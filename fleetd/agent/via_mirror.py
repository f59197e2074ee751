"""Pulling through the coordinator's registry mirror. Ollama pulls a name of the form
``host:port/namespace/model:tag`` from that host as from a registry (plain http with
``insecure``), so a pull through the mirror needs no change to Ollama.

With the mirror on, the agent reads the manifest (its disk check) from the coordinator and
has its Ollama pull ``<coordinator host:port>/<namespace>/<model>:<tag>`` with ``insecure``,
then copies it to the canonical name and deletes the mirror-named one, so clients and
``/api/tags`` see only ``gpt-oss:20b``. When the mirror is off, or answers an error that a
retry does not cure, it pulls from the registry directly, and the task's ``source`` says so.
A digest mismatch is not the mirror's fault (the blob came from upstream as it is): the
task fails with Ollama's message, which names the digest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from fleetd.core import names
from fleetd.core.catalog import CatalogError, CatalogNotFound, manifest_size
from fleetd.core.ollama import Ollama, OllamaError, PullProgress

log = logging.getLogger("fleetd.agent.downloads")

MANIFEST_RETRY_S = 1.0
SETTLE_S = 10.0
DIRECT = "registry"


class Task(Protocol):
    task_id: str
    model: str
    source: str


def mirror_name(mirror_url: str, model: str) -> str | None:
    """``host:port/namespace/model:tag`` of ``model`` on the mirror; None for a model that
    names its own registry host (the mirror serves ``registry_url``'s models only)."""
    repo, tag = names.split(model)
    if repo.count("/") != 1:
        return None
    return f"{urlsplit(mirror_url).netloc}/{repo}:{tag}"


def uses_mirror(e: Task, mirror_url: str) -> bool:
    if not mirror_url or e.source.startswith(DIRECT):
        return False
    return mirror_name(mirror_url, e.model) is not None


def go_direct(e: Task, why: str) -> None:
    e.source = f"{DIRECT} directly: {why}"
    log.warning("task %s: %s: pulling from the registry directly: %s", e.task_id, e.model, why)


async def settled(known: asyncio.Event) -> None:
    """Until the coordinator has said whether its mirror is on (an order can come before the
    agent has read its registration reply); after a while, go on without it."""
    try:
        await asyncio.wait_for(known.wait(), SETTLE_S)
    except asyncio.TimeoutError:
        pass


async def size(session: aiohttp.ClientSession, e: Task, mirror_url: str, registry_url: str) -> int:
    """Download bytes of ``e.model``, read through the mirror when it is on."""
    if uses_mirror(e, mirror_url):
        for attempt in range(2):
            try:
                total = await manifest_size(session, mirror_url, e.model)
            except CatalogNotFound:
                raise
            except CatalogError as err:
                if attempt == 0:
                    await asyncio.sleep(MANIFEST_RETRY_S)
                    continue
                go_direct(e, f"the mirror answered: {err}")
            else:
                e.source = f"mirror {mirror_url}"
                return total
    e.source = e.source or DIRECT
    return await manifest_size(session, registry_url, e.model)


async def pull(
    ollama: Ollama, e: Task, mirror_url: str, progress: Callable[[PullProgress], None]
) -> None:
    """Pull through the mirror (then copy and delete the mirror-named copy), or directly.
    A failure through the mirror other than a digest mismatch is worth a retry (the
    coordinator may be restarting); the caller's last retry goes to the registry directly."""
    name = mirror_name(mirror_url, e.model) if uses_mirror(e, mirror_url) else None
    if name is None:
        e.source = e.source or DIRECT
        await ollama.pull(e.model, progress)
        return
    e.source = f"mirror {mirror_url}"
    try:
        await ollama.pull(name, progress, insecure=True)
    except OllamaError as err:
        if err.transient or "digest mismatch" in str(err):
            raise
        raise OllamaError(f"pull through the mirror: {err}", err.status, transient=True) from None
    await ollama.copy(name, e.model)
    await ollama.delete(name)
