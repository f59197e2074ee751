"""The model-catalog contract (entry-point group ``fleetd.catalog``), its errors, the degraded
fallback built from what the fleet has installed (so the dashboard can still
offer models when ollama.com cannot be reached), and exact sizes from the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

import aiohttp
import msgspec

from fleetd.core import names

REGISTRY_TIMEOUT = aiohttp.ClientTimeout(total=8)
_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


class CatalogTag(msgspec.Struct, kw_only=True):
    """One pullable tag; ``name`` is the full ``model:tag`` form, ready for a distribution."""

    name: str
    size: int | None  # download bytes; None when the source does not say
    context: str | None = None  # context window as the library prints it ("39K")
    digest: str | None = None  # the 12-hex prefix the library shows


class CatalogModel(msgspec.Struct, kw_only=True):
    """One model of the catalog; ``tags`` is filled only by ``Catalog.get_model``."""

    name: str
    description: str = ""
    capabilities: list[str] = []
    sizes: list[str] = []  # parameter sizes ("7b", "e2b", "8x7b"), not bytes
    pulls: int | None = None
    tag_count: int | None = None
    updated: str | None = None  # as the library words it ("2 days ago")
    size: int | None = None  # download bytes of the default (``latest``) tag, when known
    tags: list[CatalogTag] | None = None


class CatalogError(Exception):
    """The catalog source is unreachable or unreadable; the one-line message says which and why."""


class CatalogNotFound(CatalogError):
    """The source answered, and it does not have this model."""


class Catalog(Protocol):
    """Constructed with the process's one ClientSession and the configured base URLs.

    Both methods raise ``CatalogError`` (``CatalogNotFound`` for an unknown model) and nothing
    else, so the caller can fall back to ``fleet_catalog`` on any failure.
    """

    def __init__(
        self, *, session: aiohttp.ClientSession, library_url: str, registry_url: str
    ) -> None: ...

    async def list_models(self) -> list[CatalogModel]: ...

    async def get_model(self, name: str) -> CatalogModel: ...


def fleet_catalog(installed: Iterable[tuple[str, int]]) -> list[CatalogModel]:
    """The degraded catalog, used while the library is unreachable, from ``(name, size)``
    pairs installed across the fleet.

    One model per repository, sorted by name, its tags deduplicated and sorted, its size
    ``default_size``. When agents disagree on a tag's size the largest wins. Names Ollama would
    refuse are left out.
    """
    sizes: dict[str, int] = {}
    for name, size in installed:
        try:
            full = names.normalize(name)
        except names.InvalidModelName:
            continue
        sizes[full] = max(size, sizes.get(full, size))
    by_model: dict[str, list[CatalogTag]] = {}
    for full in sorted(sizes):
        by_model.setdefault(full.rpartition(":")[0], []).append(
            CatalogTag(name=full, size=sizes[full])
        )
    return [
        CatalogModel(name=model, size=default_size(model, tags), tag_count=len(tags), tags=tags)
        for model, tags in sorted(by_model.items())
    ]


def default_size(model: str, tags: list[CatalogTag]) -> int | None:
    """A model's size: its ``latest`` tag's, else its largest tag's (the most a pull needs)."""
    latest = f"{model}:latest"
    for tag in tags:
        if tag.name == latest:
            return tag.size
    return max((t.size for t in tags if t.size is not None), default=None)


class _Blob(msgspec.Struct):
    size: int


class _Manifest(msgspec.Struct):
    config: _Blob
    layers: list[_Blob]


class _RegistryError(msgspec.Struct):
    code: str = ""


class _RegistryErrors(msgspec.Struct):
    errors: list[_RegistryError] = []


_UNKNOWN_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


def _registry_says_unknown(body: bytes) -> bool:
    """A 404 in the registry API's own words, not a server that is no registry at all."""
    try:
        errors = msgspec.json.decode(body, type=_RegistryErrors).errors
    except msgspec.DecodeError:
        return False
    return any(e.code in _UNKNOWN_CODES for e in errors)


async def manifest_size(
    session: aiohttp.ClientSession, registry_url: str, model: str, *, sure: bool = False
) -> int:
    """Exact download bytes of ``model`` (config plus layers of its registry manifest).

    A name that carries its own host is asked of that host, as Ollama does. Raises
    ``CatalogNotFound`` on 404 or an invalid name, ``CatalogError`` on any other failure.
    With ``sure``, only a 404 that carries the registry's ``MANIFEST_UNKNOWN`` or
    ``NAME_UNKNOWN`` is ``CatalogNotFound``; any other 404 is ``CatalogError``.
    """
    try:
        repo, tag = names.split(model)
    except names.InvalidModelName:
        raise CatalogNotFound(f"manifest of {model!r}: invalid model name") from None
    host, path = "", repo
    if repo.count("/") == 2:  # host/namespace/model: that host is the registry
        host, _, path = repo.partition("/")
    base = f"https://{host}" if host else registry_url.rstrip("/")
    url = f"{base}/v2/{path}/manifests/{tag}"
    try:
        async with session.get(
            url, headers={"Accept": _MANIFEST_V2}, timeout=REGISTRY_TIMEOUT
        ) as resp:
            if resp.status == 404:
                if sure and not _registry_says_unknown(await resp.read()):
                    raise CatalogError(f"manifest {url}: HTTP 404 without a registry's error")
                raise CatalogNotFound(f"manifest {url}: HTTP 404, no such model")
            if resp.status != 200:
                raise CatalogError(f"manifest {url}: HTTP {resp.status}")
            body = await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise CatalogError(f"manifest {url}: {network_reason(e, REGISTRY_TIMEOUT)}") from e
    try:
        manifest = msgspec.json.decode(body, type=_Manifest)
    except msgspec.DecodeError as e:
        raise CatalogError(f"manifest {url}: unreadable: {e}") from None
    sizes = [manifest.config.size, *(layer.size for layer in manifest.layers)]
    if any(s < 0 for s in sizes):
        raise CatalogError(f"manifest {url}: negative blob size")
    return sum(sizes)


def network_reason(err: BaseException, timeout: aiohttp.ClientTimeout) -> str:
    """One line saying why a request failed (aiohttp's timeouts stringify as nothing)."""
    if isinstance(err, asyncio.TimeoutError):
        return f"timed out after {timeout.total:g} s" if timeout.total else "timed out"
    return " ".join((str(err) or type(err).__name__).split())
