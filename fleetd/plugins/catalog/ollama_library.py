"""The ``ollama-library`` catalog: models and tags scraped from ollama.com's HTML pages.

Parsing runs in a worker thread (the listing is over half a megabyte of HTML); tag sizes the
page leaves out are asked of the registry, within one overall time limit.
"""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec

from fleetd.core import names
from fleetd.core.catalog import (
    CatalogError,
    CatalogModel,
    CatalogNotFound,
    CatalogTag,
    default_size,
    manifest_size,
    network_reason,
)
from fleetd.plugins.catalog.library_html import parse_library, parse_model

_TIMEOUT = aiohttp.ClientTimeout(total=8)
_REGISTRY_PARALLEL = 4


class OllamaLibrary:
    """Reads ``{library_url}/library`` and ``{library_url}/library/<name>/tags``.

    ``registry_url`` is only used for tags whose size the page does not show. Every failure
    is a ``CatalogError`` whose message names the page and the reason.
    """

    def __init__(
        self, *, session: aiohttp.ClientSession, library_url: str, registry_url: str
    ) -> None:
        self._session = session
        self._library_url = library_url.rstrip("/")
        self._registry_url = registry_url.rstrip("/")

    async def list_models(self) -> list[CatalogModel]:
        url = f"{self._library_url}/library"
        status, html = await self._fetch("library page", url)
        if status != 200:
            raise CatalogError(f"library page {url}: HTTP {status}")
        try:
            return await asyncio.to_thread(parse_library, html)
        except CatalogError as e:
            raise CatalogError(f"library page {url}: {e}") from None

    async def get_model(self, name: str) -> CatalogModel:
        """The model with all its tags; a tag in ``name`` is ignored (the model is the repo)."""
        try:
            repo, _ = names.split(name)
        except names.InvalidModelName:
            raise CatalogNotFound(f"{name!r} is not a valid model name") from None
        if repo.count("/") > 1:
            raise CatalogNotFound(f"{name!r} is hosted elsewhere, not in the Ollama library")
        model = repo.removeprefix("library/")
        url = f"{self._library_url}/{repo}/tags"
        status, html = await self._fetch("tags page", url)
        if status == 404:
            raise CatalogNotFound(f"model {model!r} is not in the library ({url}: HTTP 404)")
        if status != 200:
            raise CatalogError(f"tags page {url}: HTTP {status}")
        try:
            found = await asyncio.to_thread(parse_model, model, html)
        except CatalogError as e:
            raise CatalogError(f"tags page {url}: {e}") from None
        if found.tags and any(t.size is None for t in found.tags):
            found.tags = await self._fill_sizes(found.tags)
            found.size = default_size(model, found.tags)
        return found

    async def _fetch(self, what: str, url: str) -> tuple[int, str]:
        """Status and, for a 200, the page text; network failures are ``CatalogError``."""
        try:
            async with self._session.get(url, timeout=_TIMEOUT) as resp:
                if resp.status != 200:
                    return resp.status, ""
                return resp.status, await resp.text(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise CatalogError(f"{what} {url}: {network_reason(e, _TIMEOUT)}") from e

    async def _fill_sizes(self, tags: list[CatalogTag]) -> list[CatalogTag]:
        """Sizes the page left out, from the registry; those it cannot give in time stay None."""
        gate = asyncio.Semaphore(_REGISTRY_PARALLEL)

        async def size_of(tag: CatalogTag) -> int | None:
            if tag.size is not None:
                return tag.size
            async with gate:
                try:
                    return await manifest_size(self._session, self._registry_url, tag.name)
                except CatalogError:
                    return None

        try:
            sizes = await asyncio.wait_for(
                asyncio.gather(*(size_of(t) for t in tags)), _TIMEOUT.total
            )
        except asyncio.TimeoutError:
            return tags
        return [msgspec.structs.replace(t, size=s) for t, s in zip(tags, sizes, strict=True)]
