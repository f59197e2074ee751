"""The catalog contract, the ollama.com page parsers, and the ``ollama-library`` plugin served
from local fixtures that mirror the real pages' structure."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetd.core.catalog import (
    Catalog,
    CatalogError,
    CatalogModel,
    CatalogNotFound,
    CatalogTag,
    fleet_catalog,
    manifest_size,
)
from fleetd.core.plugins import load_plugin
from fleetd.plugins.catalog import ollama_library
from fleetd.plugins.catalog.library_html import parse_count, parse_library, parse_model, parse_size
from fleetd.plugins.catalog.ollama_library import OllamaLibrary

FIXTURES = Path(__file__).parent / "fixtures"
_ROOT = Path(__file__).resolve().parents[2]
REAL = next(
    (
        d
        for d in (
            _ROOT / "shared/reference/ollama-com",
            _ROOT.parent / "shared/reference/ollama-com",
        )
        if d.is_dir()
    ),
    None,
)
FP16_MANIFEST = {
    "schemaVersion": 2,
    "config": {"digest": "sha256:c0", "size": 561},
    "layers": [
        {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": "sha256:a1",
            "size": 47_153_518_592,
        },
        {
            "mediaType": "application/vnd.ollama.image.template",
            "digest": "sha256:b2",
            "size": 1_578,
        },
        {
            "mediaType": "application/vnd.ollama.image.license",
            "digest": "sha256:d3",
            "size": 11_357,
        },
    ],
}
FP16_BYTES = 561 + 47_153_518_592 + 1_578 + 11_357

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- parsers ------------------------------------------------------------------------------


def test_library_page_gives_every_model_with_its_figures() -> None:
    models = {m.name: m for m in parse_library(fixture("library.html"))}

    assert list(models) == ["qwen3-coder", "mistral-small3.2", "embeddinggemma", "magistral"]
    assert models["qwen3-coder"] == CatalogModel(
        name="qwen3-coder",
        description="Alibaba's performant long context models for agentic and coding tasks.",
        sizes=["30b"],
        pulls=18_900,
        tag_count=6,
        updated="2 days ago",
    )
    assert models["mistral-small3.2"].capabilities == ["vision", "tools"]
    assert models["mistral-small3.2"].pulls == 1_200_000
    assert models["embeddinggemma"].capabilities == ["embedding"]
    assert models["embeddinggemma"].sizes == ["300m"]
    assert models["embeddinggemma"].pulls == 907
    assert models["magistral"].pulls == 52_300
    assert all(m.tags is None and m.size is None for m in models.values())


def test_unreadable_field_is_none_not_fatal() -> None:
    magistral = parse_library(fixture("library.html"))[-1]
    assert magistral.name == "magistral"
    assert magistral.tag_count is None  # the page says "many"


def test_library_entry_without_a_name_is_skipped() -> None:
    names = [m.name for m in parse_library(fixture("library.html"))]
    assert "broken" not in names
    assert len(names) == 4


@pytest.mark.parametrize(
    ("text", "count"),
    [("907", 907), ("52.3K", 52_300), ("18.9K", 18_900), ("1.2M", 1_200_000),
     ("99.2M", 99_200_000), ("1,234", 1_234), (" 6 ", 6), ("2B", 2_000_000_000),
     ("many", None), ("", None)],
)  # fmt: skip
def test_counts_are_read_as_the_library_prints_them(text: str, count: int | None) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(
    ("text", "size"),
    [("14GB", 14_000_000_000), ("1.3 GB", 1_300_000_000), ("274MB", 274_000_000),
     ("4.1KB", 4_100), ("512B", 512), ("1.2TB", 1_200_000_000_000),
     ("24b", None), ("14 GiB", None), ("GB", None), ("", None)],
)  # fmt: skip
def test_sizes_are_decimal_bytes(text: str, size: int | None) -> None:
    assert parse_size(text) == size


def _tag(tag: str, size: int | None, context: str, digest: str) -> CatalogTag:
    return CatalogTag(name=f"magistral:{tag}", size=size, context=context, digest=digest)


def test_tags_page_gives_each_tag_with_its_size_in_bytes() -> None:
    model = parse_model("magistral", fixture("tags.html"))

    assert model.tags == [
        _tag("latest", 14_000_000_000, "39K", "27bcbbf6d324"),
        _tag("24b", 14_000_000_000, "39K", "27bcbbf6d324"),
        _tag("24b-small-2506-q4_K_M", 1_300_000_000, "39K", "5f1b8c0a9e21"),
        _tag("24b-small-2506-q8_0", 274_000_000, "128K", "02423f83f1a1"),
        _tag("tiny", 4_100, "2K", "0a0e2be3b6c4"),
        # no size on the page, and the footer's "99GB" after it must not be taken for one
        _tag("24b-small-2506-fp16", None, "39K", "9c3d7e5b1a04"),
    ]
    assert model.name == "magistral"
    assert (
        model.description == "Magistral is a small, efficient reasoning model with 24B parameters."
    )
    assert model.sizes == ["24b"]
    assert model.pulls == 221_000
    assert model.updated == "1 month ago"
    assert model.tag_count == 6
    assert model.size == 14_000_000_000  # the latest tag's


def test_tag_with_an_invalid_name_is_skipped() -> None:
    tags = parse_model("magistral", fixture("tags.html")).tags or []
    assert "magistral:bad tag!" not in [t.name for t in tags]


def test_tags_of_other_models_are_ignored() -> None:
    # the fixture's header links to gpt-oss:20b (with a size) before magistral's table
    tags = parse_model("magistral", fixture("tags.html")).tags or []
    assert all(t.name.startswith("magistral:") for t in tags)


@pytest.mark.parametrize(
    "html", [fixture("layout-changed.html"), "", "not html at all", "<li x-test-repos>", "<![if"]
)
def test_layout_change_is_a_catalog_error(html: str) -> None:
    with pytest.raises(CatalogError, match="layout changed"):
        parse_library(html)
    with pytest.raises(CatalogError, match="layout changed"):
        parse_model("llama3", html)


def test_entries_without_names_are_reported_as_such() -> None:
    html = "<ul><li x-test-model><div x-test-model-title>llama3</div></li></ul>"
    with pytest.raises(CatalogError, match="1 entries, none with a model name"):
        parse_library(html)


@pytest.mark.skipif(REAL is None, reason="no captured ollama.com pages (shared/reference)")
def test_parsers_read_the_real_captured_pages() -> None:
    assert REAL is not None
    models = parse_library((REAL / "library-listing-newest.html").read_text())
    assert len(models) > 50
    assert all(m.name and m.description for m in models)
    assert sum(m.pulls is not None for m in models) > 50
    assert {"tools", "vision", "embedding"} <= {c for m in models for c in m.capabilities}

    magistral = parse_model("magistral", (REAL / "models-magistral-tags.html").read_text())
    tags = magistral.tags or []
    assert len(tags) >= 5
    assert all(t.size is not None and t.size > 1e9 for t in tags)
    assert all(t.digest and len(t.digest) == 12 for t in tags)
    assert magistral.description.startswith("Magistral")


# --- fleet fallback ---------------------------------------------------------------------


def test_fleet_catalog_groups_installed_tags_by_model() -> None:
    catalog = fleet_catalog(
        [
            ("qwen3:8b", 5_200_000_000),
            ("gpt-oss:20b", 13_793_441_244),
            ("library/qwen3:latest", 5_200_000_000),
            ("qwen3:32b", 20_000_000_000),
            ("gpt-oss:20b", 13_793_441_244),  # the same tag on another agent
            ("myns/tuned", 1_000),
            ("bad name", 1),
        ]
    )

    assert [m.name for m in catalog] == ["gpt-oss", "myns/tuned", "qwen3"]
    gpt, tuned, qwen = catalog
    assert gpt.tags == [CatalogTag(name="gpt-oss:20b", size=13_793_441_244)]
    assert gpt.size == 13_793_441_244  # no latest: the largest tag
    assert tuned.tags == [CatalogTag(name="myns/tuned:latest", size=1_000)]
    assert [t.name for t in qwen.tags or []] == ["qwen3:32b", "qwen3:8b", "qwen3:latest"]
    assert qwen.size == 5_200_000_000  # latest wins over the larger 32b
    assert qwen.tag_count == 3


def test_fleet_catalog_keeps_the_largest_size_agents_report() -> None:
    (model,) = fleet_catalog([("m:1b", 10), ("m:1b", 30), ("m:1b", 20)])
    assert model.tags == [CatalogTag(name="m:1b", size=30)]


def test_fleet_catalog_of_nothing_is_empty() -> None:
    assert fleet_catalog([]) == []


# --- the plugin against a local server ---------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _page(name: str) -> Handler:
    async def serve(_: web.Request) -> web.Response:
        return web.Response(text=fixture(name), content_type="text/html")

    return serve


async def _manifest(request: web.Request) -> web.Response:
    if request.headers.get("Accept") != "application/vnd.docker.distribution.manifest.v2+json":
        return web.Response(status=406)
    tag = request.match_info["tag"]
    if request.match_info["name"] != "magistral" or tag == "gone":
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
    if tag == "garbled":
        return web.Response(text="{not json")
    return web.json_response(FP16_MANIFEST)


@pytest.fixture
async def library(aiohttp_server: ServerFactory) -> TestServer:
    """ollama.com and its registry on one local server, answering from the fixtures."""

    app = web.Application()
    app.router.add_get("/library", _page("library.html"))
    app.router.add_get("/library/magistral/tags", _page("tags.html"))
    app.router.add_get("/v2/library/{name}/manifests/{tag}", _manifest)
    return await aiohttp_server(app)


def _base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _plugin(session: aiohttp.ClientSession, url: str) -> Catalog:
    """Typed as the Protocol, so mypy checks that the plugin fulfils it."""
    return OllamaLibrary(session=session, library_url=url + "/", registry_url=url)


def test_plugin_is_registered_under_its_config_name() -> None:
    assert load_plugin("fleetd.catalog", "ollama-library", "coordinator.catalog") is OllamaLibrary


async def test_list_models_reads_the_library_page(
    library: TestServer, session: aiohttp.ClientSession
) -> None:
    models = await _plugin(session, _base(library)).list_models()
    assert models == parse_library(fixture("library.html"))
    assert len(models) == 4


async def test_get_model_fills_missing_sizes_from_the_registry(
    library: TestServer, session: aiohttp.ClientSession
) -> None:
    model = await _plugin(session, _base(library)).get_model("magistral")

    tags = {t.name: t for t in model.tags or []}
    assert tags["magistral:24b-small-2506-fp16"].size == FP16_BYTES
    assert tags["magistral:24b-small-2506-fp16"].digest == "9c3d7e5b1a04"
    assert tags["magistral:24b-small-2506-q8_0"].size == 274_000_000  # the page's, kept
    assert model.size == 14_000_000_000
    assert model.description.startswith("Magistral")


@pytest.mark.parametrize("name", ["magistral:24b", "library/magistral", "magistral:latest"])
async def test_get_model_takes_any_spelling_of_the_model(
    library: TestServer, session: aiohttp.ClientSession, name: str
) -> None:
    model = await _plugin(session, _base(library)).get_model(name)
    assert model.name == "magistral"
    assert len(model.tags or []) == 6


async def test_unknown_model_is_not_found(
    library: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(CatalogNotFound, match=r"'nosuchmodel' is not in the library .*HTTP 404"):
        await _plugin(session, _base(library)).get_model("nosuchmodel")


@pytest.mark.parametrize("name", ["bad name", "hf.co/someone/model:Q4_K_M"])
async def test_names_the_library_cannot_have_are_not_found(
    session: aiohttp.ClientSession, name: str
) -> None:
    # no server at all: these are refused before any request
    with pytest.raises(CatalogNotFound):
        await _plugin(session, "http://127.0.0.1:9").get_model(name)


@pytest.fixture
async def broken(aiohttp_server: ServerFactory) -> TestServer:
    """A library that fails: 500 on the listing, a restyled tags page."""

    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    app = web.Application()
    app.router.add_get("/library", fail)
    app.router.add_get("/library/magistral/tags", _page("layout-changed.html"))
    app.router.add_get("/library/llama3/tags", fail)
    return await aiohttp_server(app)


async def test_server_error_is_a_catalog_error_naming_the_page(
    broken: TestServer, session: aiohttp.ClientSession
) -> None:
    base = _base(broken)
    plugin = _plugin(session, base)
    with pytest.raises(CatalogError, match=rf"^library page {base}/library: HTTP 500$"):
        await plugin.list_models()
    with pytest.raises(CatalogError, match=rf"^tags page {base}/library/llama3/tags: HTTP 500$"):
        await plugin.get_model("llama3")


async def test_restyled_page_is_a_catalog_error(
    broken: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(CatalogError, match=r"tags/?: no tags of magistral found, page layout"):
        await _plugin(session, _base(broken)).get_model("magistral")


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_unreachable_library_is_a_catalog_error(session: aiohttp.ClientSession) -> None:
    plugin = _plugin(session, _refused_url())
    with pytest.raises(
        CatalogError, match=r"^library page http://\S+/library: Cannot connect"
    ) as err:
        await plugin.list_models()
    assert type(err.value) is CatalogError
    assert "\n" not in str(err.value)
    with pytest.raises(CatalogError, match=r"^tags page \S+/magistral/tags: Cannot conn") as err:
        await plugin.get_model("magistral")
    assert type(err.value) is CatalogError


async def test_slow_library_times_out_as_a_catalog_error(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    never = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/library", hang)
    server = await aiohttp_server(app)
    monkeypatch.setattr(ollama_library, "_TIMEOUT", aiohttp.ClientTimeout(total=0.1))
    with pytest.raises(CatalogError, match=r"^library page \S+/library: timed out after 0.1 s$"):
        await _plugin(session, _base(server)).list_models()


async def test_manifest_size_is_config_plus_layers(
    library: TestServer, session: aiohttp.ClientSession
) -> None:
    base = _base(library)
    assert await manifest_size(session, base, "magistral:24b-small-2506-fp16") == FP16_BYTES
    assert await manifest_size(session, base + "/", "library/magistral") == FP16_BYTES


async def test_manifest_size_failures(library: TestServer, session: aiohttp.ClientSession) -> None:
    base = _base(library)
    with pytest.raises(CatalogNotFound, match="HTTP 404"):
        await manifest_size(session, base, "magistral:gone")
    with pytest.raises(CatalogNotFound, match="HTTP 404"):
        await manifest_size(session, base, "nosuchmodel:7b")
    with pytest.raises(CatalogNotFound, match="invalid model name"):
        await manifest_size(session, base, "bad name")
    with pytest.raises(CatalogError, match="unreadable") as err:
        await manifest_size(session, base, "magistral:garbled")
    assert type(err.value) is CatalogError
    with pytest.raises(CatalogError, match="Cannot connect"):
        await manifest_size(session, _refused_url(), "magistral")


def test_catalog_structs_encode_as_plain_json() -> None:
    model = CatalogModel(name="m", tags=[CatalogTag(name="m:latest", size=1)])
    assert msgspec.json.decode(msgspec.json.encode(model))["tags"] == [
        {"name": "m:latest", "size": 1, "context": None, "digest": None}
    ]
