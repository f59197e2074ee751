"""The simulator pulling for real from another registry, as Ollama's server/download.go does
(ollama.md, How Ollama downloads from a registry), against the sim's own registry, which
serves real blobs with real sha256 digests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fleetd.sim.options import SimOptions
from fleetd.sim.server import build_app

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]
MODEL = "llama3.2:1b"


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**overrides: Any) -> Client:
        fast: dict[str, Any] = {"size_scale": 1e-4, "bandwidth_bps": 0, "chunk_interval_s": 0.01}
        client: Client = await aiohttp_client(build_app(SimOptions(**(fast | overrides))))
        return client

    return make


def mirror_name(registry: Client, model: str = MODEL) -> str:
    name, tag = model.split(":")
    return f"127.0.0.1:{registry.port}/library/{name}:{tag}"


async def pull(client: Client, model: str) -> list[dict[str, Any]]:
    async with client.post("/api/pull", json={"model": model, "insecure": True}) as resp:
        assert resp.status == 200
        return [json.loads(line) async for line in resp.content]


async def knobs(registry: Client, **values: Any) -> None:
    async with registry.post("/_sim/registry", json=values) as resp:
        assert resp.status == 200, await resp.text()


async def test_registry_blobs_are_real_and_ranges_exact(make_sim: MakeSim) -> None:
    registry = await make_sim()
    async with registry.get("/v2/library/llama3.2/manifests/1b") as resp:
        manifest = await resp.json(content_type=None)
    layer = manifest["layers"][0]
    async with registry.head(f"/v2/library/llama3.2/blobs/{layer['digest']}") as resp:
        assert int(resp.headers["Content-Length"]) == layer["size"]
    async with registry.get(
        f"/v2/library/llama3.2/blobs/{layer['digest']}", allow_redirects=False
    ) as resp:
        assert resp.status == 307
        cdn = resp.headers["Location"]
        assert "localhost" in cdn  # another host name, as registry.ollama.ai's CDN
    path = cdn.split(str(registry.port), 1)[1]
    async with registry.get(path) as resp:
        body = await resp.read()
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer["digest"]
    async with registry.get(path, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert await resp.read() == body[10:20]


async def test_pull_from_registry_copy_and_delete_share_blobs(make_sim: MakeSim) -> None:
    registry, ollama = await make_sim(), await make_sim()
    name = mirror_name(registry)
    lines = await pull(ollama, name)
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    assert any(line.get("completed") == line.get("total") for line in lines if "digest" in line)
    async with ollama.post("/api/copy", json={"source": name, "destination": MODEL}) as resp:
        assert resp.status == 200
    async with ollama.delete("/api/delete", json={"model": name}) as resp:
        assert resp.status == 200
    async with ollama.get("/api/tags") as resp:
        tags = [m["name"] for m in (await resp.json())["models"]]
    assert tags == [MODEL]
    async with ollama.get("/_sim/state") as resp:
        state = await resp.json()
    async with registry.get("/_sim/registry") as resp:
        served = (await resp.json())["served_bytes"]
    assert state["disk"]["used"] == served  # one download, blobs shared by the copy


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"redirect": "plain"}, "http: no Location header in response"),
        ({"redirect": "302"}, "unexpected status code 302"),
        ({"ignore_range": True}, "digest mismatch, file must be downloaded again: want sha256:"),
    ],
)
async def test_registry_misbehaviour_fails_as_ollama_does(
    make_sim: MakeSim, settings: dict[str, Any], error: str
) -> None:
    registry, ollama = await make_sim(), await make_sim()
    await knobs(registry, **settings)
    lines = await pull(ollama, mirror_name(registry))
    assert error in lines[-1]["error"]
    async with ollama.get("/api/tags") as resp:
        assert (await resp.json())["models"] == []


async def test_location_header_with_200_is_followed(make_sim: MakeSim) -> None:
    registry, ollama = await make_sim(), await make_sim()
    await knobs(registry, redirect="location")
    assert (await pull(ollama, mirror_name(registry)))[-1] == {"status": "success"}


async def test_unknown_manifest_and_corrupt_blob(make_sim: MakeSim) -> None:
    registry, ollama = await make_sim(), await make_sim()
    lines = await pull(ollama, mirror_name(registry, "nope:1b"))
    assert lines[-1] == {"error": "pull model manifest: file does not exist"}
    async with registry.get("/v2/library/llama3.2/manifests/1b") as resp:
        digest = (await resp.json(content_type=None))["layers"][0]["digest"]
    await knobs(registry, corrupt=[digest])
    lines = await pull(ollama, mirror_name(registry))
    assert f"want {digest}, got sha256:" in lines[-1]["error"]
    await knobs(registry)  # healthy again: the next pull fetches the blob anew
    assert (await pull(ollama, mirror_name(registry)))[-1] == {"status": "success"}
