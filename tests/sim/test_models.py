"""Model management against ollama.md ("Basics", "Installed models", "Other endpoints")."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fleetd.sim.options import SimOptions
from fleetd.sim.server import build_app

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]
MODEL = "gpt-oss:20b"


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**overrides: Any) -> Client:
        settings: dict[str, Any] = {"size_scale": 1e-6, "preinstalled": [MODEL]}
        client: Client = await aiohttp_client(build_app(SimOptions(**(settings | overrides))))
        return client

    return make


async def tags(client: Client) -> list[dict[str, Any]]:
    async with client.get("/api/tags") as resp:
        models: list[dict[str, Any]] = (await resp.json())["models"]
        return models


async def test_banner_and_version(make_sim: MakeSim) -> None:
    client = await make_sim(version="0.12.9")
    async with client.get("/") as resp:
        assert resp.status == 200 and await resp.text() == "Ollama is running"
    async with client.get("/api/version") as resp:
        assert await resp.json() == {"version": "0.12.9"}


async def test_tags_have_ollamas_shape(make_sim: MakeSim) -> None:
    client = await make_sim()
    (model,) = await tags(client)
    assert set(model) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert model["name"] == model["model"] == MODEL
    assert model["size"] == 13_793
    assert re.fullmatch(r"[0-9a-f]{64}", model["digest"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", model["modified_at"])
    assert model["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "gptoss",
        "families": ["gptoss"],
        "parameter_size": "20.9B",
        "quantization_level": "MXFP4",
    }


async def test_show_describes_the_model(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/show", json={"model": MODEL}) as resp:
        body = await resp.json()
    assert {"details", "modelfile", "parameters", "template", "model_info"} <= set(body)
    assert body["model_info"]["gptoss.context_length"] == 131072
    assert "completion" in body["capabilities"]
    async with client.post("/api/show", json={"model": "nope"}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "model 'nope' not found"}


async def test_delete_answers_empty_200_then_404(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.delete("/api/delete", json={"model": MODEL}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert await tags(client) == []
    async with client.get("/_sim/state") as resp:
        assert (await resp.json())["disk"]["used"] == 0
    async with client.delete("/api/delete", json={"model": MODEL}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": f"model '{MODEL}' not found"}
    async with client.post("/api/delete", json={"model": MODEL}) as resp:
        assert resp.status == 405  # DELETE only, as in Ollama


async def test_copy_shares_blobs(make_sim: MakeSim) -> None:
    client = await make_sim()
    body = {"source": MODEL, "destination": "mine/oss:v1"}
    async with client.post("/api/copy", json=body) as resp:
        assert resp.status == 200 and await resp.read() == b""
    listed = {m["name"]: m for m in await tags(client)}
    assert listed["mine/oss:v1"]["digest"] == listed[MODEL]["digest"]
    async with client.delete("/api/delete", json={"model": MODEL}) as resp:
        assert resp.status == 200
    async with client.get("/_sim/state") as resp:
        assert (await resp.json())["disk"]["used"] == 13_793  # still used by the copy
    async with client.post("/api/copy", json={"source": "nope", "destination": "x"}) as resp:
        assert resp.status == 404


async def test_installed_names_match_case_insensitively(make_sim: MakeSim) -> None:
    # Ollama's getExistingName: a request finds an installed model whatever its case.
    client = await make_sim(token_delay_ms=0)
    body = {"model": "GPT-OSS:20B", "prompt": "hi", "stream": False}
    async with client.post("/api/generate", json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["model"] == "GPT-OSS:20B"  # echoed as sent
    async with client.get("/api/ps") as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == [MODEL]


@pytest.mark.parametrize("name", ["bad name", "ns.x/m", "a/b/c/d", "m:"])
async def test_invalid_names_are_400_everywhere(make_sim: MakeSim, name: str) -> None:
    client = await make_sim()
    for method, path, body in (
        ("POST", "/api/chat", {"model": name, "messages": []}),
        ("POST", "/api/generate", {"model": name}),
        ("POST", "/api/show", {"model": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/embed", {"model": name, "input": "x"}),
    ):
        async with client.request(method, path, json=body) as resp:
            assert resp.status == 400, path
            assert await resp.json() == {"error": "invalid model name"}
