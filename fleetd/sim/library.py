"""ollama.com's library pages for the simulated registry, so a catalog pointed at the sim
(``coordinator.library_url``, as ``fleetd demo`` does) lists exactly what the sim can pull.

Only the markup fleetd's library parser reads is produced: the ``x-test-*`` attributes
ollama.com keeps for its own tests and one link per tag to ``/library/<name>:<tag>``.
"""

from __future__ import annotations

import re
from html import escape

from aiohttp import web

from fleetd.sim import names
from fleetd.sim.catalog import ModelSpec
from fleetd.sim.context import SIM

routes = web.RouteTableDef()

_SHOWN_CAPABILITIES = ("tools", "thinking", "vision", "embedding")
_PARAMS_RE = re.compile(r"^(?:.*-)?(\d+(?:\.\d+)?[bm])(?:-|$)", re.IGNORECASE)
_UPDATED = "1 month ago"


def _library(catalog: dict[str, ModelSpec]) -> dict[str, list[ModelSpec]]:
    """The library's models (default host and namespace only), their tags in catalog order."""
    repos: dict[str, list[ModelSpec]] = {}
    for name, spec in catalog.items():
        host, namespace, model, _ = names.parse(name)
        if host.lower() == names.DEFAULT_HOST and namespace.lower() == names.DEFAULT_NAMESPACE:
            repos.setdefault(model, []).append(spec)
    return repos


def _size_text(n: int) -> str:
    """Decimal units, as ollama.com prints them ("14GB", "654MB")."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


def _params(spec: ModelSpec) -> str:
    m = _PARAMS_RE.match(names.parse(spec.name)[3])
    return m.group(1).lower() if m else spec.parameter_size.lower()


def _header(model: str, specs: list[ModelSpec]) -> str:
    caps = dict.fromkeys(c for s in specs for c in s.capabilities if c in _SHOWN_CAPABILITIES)
    sizes = dict.fromkeys(_params(s) for s in specs)
    return (
        "".join(f"<span x-test-capability>{escape(c)}</span>" for c in caps)
        + "".join(f"<span x-test-size>{escape(s)}</span>" for s in sizes)
        + "<span x-test-pull-count>0</span>"
        + f"<span x-test-tag-count>{len(specs)}</span>"
        + f"<span x-test-updated>{_UPDATED}</span>"
    )


def _description(specs: list[ModelSpec]) -> str:
    s = specs[0]
    return f"{s.family} model served by fleetd sim-ollama ({s.quantization_level})"


def _page(title: str, body: str) -> web.Response:
    head = f"<head><title>{escape(title)}</title></head>"
    html = f"<!DOCTYPE html><html>{head}<body>{body}</body></html>"
    return web.Response(text=html, content_type="text/html")


@routes.get("/library")
async def library(request: web.Request) -> web.Response:
    items = [
        f'<li x-test-model><a href="/library/{escape(model)}">'
        f'<span x-test-model-title title="{escape(model)}">{escape(model)}</span>'
        f"<p>{escape(_description(specs))}</p>{_header(model, specs)}</a></li>"
        for model, specs in sorted(_library(request.app[SIM].store.catalog).items())
    ]
    return _page("Library", f"<ul>{''.join(items)}</ul>")


@routes.get("/library/{model}/tags")
async def tags(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    specs = _library(request.app[SIM].store.catalog).get(model)
    if not specs:
        raise web.HTTPNotFound(text=f"model {model!r} not found")
    rows = [
        f'<div><a href="/library/{escape(model)}:{escape(tag)}">{escape(model)}:{escape(tag)}</a>'
        f"<p>{spec.digest[:12]} · {_size_text(spec.size)} · "
        f"{spec.context_length // 1024}K context window</p></div>"
        for spec in specs
        for tag in (names.parse(spec.name)[3],)
    ]
    body = (
        f'<span id="summary-content">{escape(_description(specs))}</span>'
        f"{_header(model, specs)}<section>{''.join(rows)}</section>"
    )
    return _page(f"Tags · {model}", body)
