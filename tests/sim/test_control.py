"""The ``/_sim`` control API: knobs a test turns on a running simulator, and its counters."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fleetd.sim.options import Fault, SimOptions
from fleetd.sim.server import build_app

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]
MODEL = "llama3.2:1b"


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**overrides: Any) -> Client:
        settings: dict[str, Any] = {"size_scale": 1e-6, "bandwidth_bps": 0, "token_delay_ms": 0}
        client: Client = await aiohttp_client(build_app(SimOptions(**(settings | overrides))))
        return client

    return make


async def post(client: Client, path: str, body: Any = None) -> tuple[int, Any]:
    async with client.post(path, json=body) as resp:
        return resp.status, await resp.json()


async def sim_state(client: Client) -> dict[str, Any]:
    async with client.get("/_sim/state") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def test_state_counts_pulls_loads_and_requests(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/pull", json={"model": MODEL, "stream": False}) as resp:
        assert resp.status == 200
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
    for _ in range(2):
        async with client.post("/api/chat", json=body) as resp:
            assert resp.status == 200
    state = await sim_state(client)
    assert state["pulls"] == {MODEL: 1} and state["downloads"] == {MODEL: 1}
    assert state["bytes_downloaded"] == {MODEL: 1_321}
    assert state["loads"] == {MODEL: 1} and state["requests"] == {MODEL: 2}
    assert [m["name"] for m in state["installed"]] == [MODEL]
    assert [m["name"] for m in state["loaded"]] == [MODEL]
    assert state["disk"] == {"used": 1_321, "capacity": 2 * 10**12}


async def test_settings_change_a_running_sim(make_sim: MakeSim) -> None:
    client = await make_sim()
    status, settings = await post(
        client, "/_sim/settings", {"bandwidth_bps": "50MB", "disk_bytes": 1000, "latency_ms": 5}
    )
    assert status == 200
    assert settings["bandwidth_bps"] == 50e6 and settings["disk_bytes"] == 1000
    async with client.post("/api/pull", json={"model": MODEL}) as resp:
        last = [json.loads(line) async for line in resp.content][-1]
    assert last["error"].endswith("no space left on device")
    for bad in ({"disk_bytes": "lots"}, {"max_loaded_models": 0}, {"nonsense": 1}):
        status, body = await post(client, "/_sim/settings", bad)
        assert status == 400 and isinstance(body["error"], str)


async def test_faults_are_armed_listed_and_cleared(make_sim: MakeSim) -> None:
    client = await make_sim()
    fault = {"model": MODEL, "kind": "fail", "at": 0.2, "message": "boom", "times": -1}
    status, body = await post(client, "/_sim/faults", fault)
    assert status == 200 and body == {"faults": [fault]}
    for _ in range(2):  # times -1: every pull fails
        async with client.post("/api/pull", json={"model": MODEL, "stream": False}) as resp:
            assert resp.status == 500 and await resp.json() == {"error": "boom"}
    async with client.delete("/_sim/faults") as resp:
        assert await resp.json() == {"faults": []}
    async with client.post("/api/pull", json={"model": MODEL, "stream": False}) as resp:
        assert resp.status == 200
    for bad in ({"model": MODEL, "kind": "melt"}, {"model": MODEL, "at": 2}, {"at": 0.5}):
        status, _ = await post(client, "/_sim/faults", bad)
        assert status == 400


async def test_faults_given_at_start(make_sim: MakeSim) -> None:
    client = await make_sim(faults=[Fault("library/llama3.2:1b", "fail", 0.0, "nope")])
    async with client.post("/api/pull", json={"model": MODEL}) as resp:
        assert [json.loads(line) async for line in resp.content][-1] == {"error": "nope"}


async def test_down_drops_connections_until_up(make_sim: MakeSim) -> None:
    client = await make_sim(preinstalled=[MODEL], bandwidth_bps=1_000)
    body = {"model": MODEL, "keep_alive": -1}
    async with client.post("/api/generate", json=body) as resp:
        assert resp.status == 200
    pulling = await client.post("/api/pull", json={"model": "qwen2.5:0.5b"})
    await pulling.content.readline()
    assert await post(client, "/_sim/down") == (200, {"down": True})
    with pytest.raises(aiohttp.ClientPayloadError):
        await pulling.read()  # the stream in flight is cut, no error line
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.get("/api/version")
    state = await sim_state(client)
    assert state["down"] is True and state["loaded"] == [] and state["active_pulls"] == {}
    assert await post(client, "/_sim/up") == (200, {"down": False})
    async with client.get("/api/version") as resp:
        assert resp.status == 200


async def test_evict_unloads_silently(make_sim: MakeSim) -> None:
    client = await make_sim(preinstalled=[MODEL])
    async with client.post("/api/generate", json={"model": MODEL, "keep_alive": -1}) as resp:
        assert resp.status == 200
    assert await post(client, "/_sim/evict", {"model": MODEL}) == (200, {"evicted": True})
    assert await post(client, "/_sim/evict", {"model": MODEL}) == (200, {"evicted": False})
    async with client.get("/api/ps") as resp:
        assert await resp.json() == {"models": []}
