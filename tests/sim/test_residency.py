"""Residency against ollama.md ("Keeping a model resident", "Loaded models", "Busy"):
keep_alive, expiry, silent eviction, the memory error and the bounded queue."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fleetd.sim.options import SimOptions
from fleetd.sim.server import build_app

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]
MODELS = {"a:1b": 1_000, "b:1b": 1_000, "c:1b": 1_000, "big:70b": 5_000}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**overrides: Any) -> Client:
        settings: dict[str, Any] = {
            "models": MODELS,
            "preinstalled": list(MODELS),
            "vram_bytes": 10_000,
            "token_delay_ms": 1,
        }
        client: Client = await aiohttp_client(build_app(SimOptions(**(settings | overrides))))
        return client

    return make


def parse_time(text: str) -> datetime:
    assert TIME.fullmatch(text), text
    seconds, _, frac = text[:-1].partition(".")
    stamp = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return stamp.replace(microsecond=int((frac or "0")[:6].ljust(6, "0")))


async def load(client: Client, model: str, keep_alive: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    async with client.post("/api/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def chat(client: Client, model: str, **extra: Any) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with client.post("/api/chat", json=body | extra) as resp:
        await resp.read()
        return resp.status


async def ps(client: Client) -> dict[str, float]:
    """Loaded model -> seconds until it expires."""
    async with client.get("/api/ps") as resp:
        models = (await resp.json())["models"]
    now = datetime.now(timezone.utc)
    return {m["name"]: (parse_time(m["expires_at"]) - now).total_seconds() for m in models}


async def test_load_request_answers_done_reason_load(make_sim: MakeSim) -> None:
    client = await make_sim()
    body = await load(client, "a:1b", -1)
    assert body["model"] == "a:1b" and body["done"] is True
    assert body["done_reason"] == "load" and body["response"] == ""
    assert TIME.fullmatch(body["created_at"])


async def test_negative_keep_alive_keeps_a_model_for_centuries(make_sim: MakeSim) -> None:
    # Go's time.Duration(math.MaxInt64): about 292 years, year 2318 when counted from 2025.
    client = await make_sim()
    await load(client, "a:1b", -1)
    await load(client, "b:1b", "-1m")
    years = {name: seconds / (365.2425 * 86400) for name, seconds in (await ps(client)).items()}
    assert years == {"a:1b": pytest.approx(292.3, abs=0.1), "b:1b": pytest.approx(292.3, abs=0.1)}


async def test_ps_has_ollamas_shape(make_sim: MakeSim) -> None:
    client = await make_sim()
    await load(client, "a:1b", "1h")
    async with client.get("/api/ps") as resp:
        (model,) = (await resp.json())["models"]
    assert set(model) == {
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    }
    assert model["size"] == model["size_vram"] == 1_000
    assert re.fullmatch(r"[0-9a-f]{64}", model["digest"])
    assert model["context_length"] > 0


async def test_keep_alive_durations(make_sim: MakeSim) -> None:
    client = await make_sim()
    await load(client, "a:1b", "5m")
    await load(client, "b:1b", "1h30m")
    await load(client, "c:1b", 90)
    left = await ps(client)
    assert left["a:1b"] == pytest.approx(300, abs=5)
    assert left["b:1b"] == pytest.approx(5400, abs=5)
    assert left["c:1b"] == pytest.approx(90, abs=5)


async def test_keep_alive_zero_unloads_now(make_sim: MakeSim) -> None:
    client = await make_sim()
    await load(client, "a:1b", -1)
    body = await load(client, "a:1b", 0)
    assert body["done_reason"] == "unload"
    assert await ps(client) == {}


async def test_expiry_really_unloads(make_sim: MakeSim) -> None:
    client = await make_sim()
    await load(client, "a:1b", 0.2)
    assert "a:1b" in await ps(client)
    await asyncio.sleep(0.4)
    assert await ps(client) == {}


async def test_a_request_without_keep_alive_keeps_residency(make_sim: MakeSim) -> None:
    client = await make_sim()
    await load(client, "a:1b", -1)
    assert await chat(client, "a:1b") == 200
    assert (await ps(client))["a:1b"] > 100 * 365 * 86400
    assert await chat(client, "a:1b", keep_alive="10m") == 200
    assert (await ps(client))["a:1b"] == pytest.approx(600, abs=5)


async def test_a_request_that_loads_gets_five_minutes(make_sim: MakeSim) -> None:
    client = await make_sim()
    assert await chat(client, "a:1b") == 200
    assert (await ps(client))["a:1b"] == pytest.approx(300, abs=5)


async def test_a_v1_request_that_reloads_gets_five_minutes(make_sim: MakeSim) -> None:
    client = await make_sim()
    await load(client, "a:1b", -1)
    async with client.post("/_sim/evict", json={"model": "a:1b"}) as resp:
        assert await resp.json() == {"evicted": True}
    assert await ps(client) == {}
    body = {"model": "a:1b", "messages": [{"role": "user", "content": "hi"}]}
    async with client.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
    assert (await ps(client))["a:1b"] == pytest.approx(300, abs=5)


async def test_bad_keep_alive_is_400(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/generate", json={"model": "a:1b", "keep_alive": "300"}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": 'time: missing unit in duration "300"'}


async def test_vram_pressure_evicts_the_least_recently_used(make_sim: MakeSim) -> None:
    client = await make_sim(vram_bytes=2_500)
    await load(client, "a:1b")
    await load(client, "b:1b")
    assert await chat(client, "a:1b") == 200  # a is now the more recently used
    await load(client, "c:1b")
    assert set(await ps(client)) == {"a:1b", "c:1b"}


async def test_eviction_spares_models_kept_forever(make_sim: MakeSim) -> None:
    client = await make_sim(vram_bytes=2_500)
    await load(client, "a:1b", -1)
    await load(client, "b:1b")
    await load(client, "c:1b")  # b has the shorter keep_alive, so it goes, not a
    assert set(await ps(client)) == {"a:1b", "c:1b"}


async def test_max_loaded_models_evicts(make_sim: MakeSim) -> None:
    client = await make_sim(max_loaded_models=2)
    for model in ("a:1b", "b:1b", "c:1b"):
        await load(client, model)
    assert set(await ps(client)) == {"b:1b", "c:1b"}
    async with client.get("/_sim/state") as resp:
        assert (await resp.json())["loads"] == {"a:1b": 1, "b:1b": 1, "c:1b": 1}


async def test_a_model_too_big_for_vram_is_a_500(make_sim: MakeSim) -> None:
    client = await make_sim(vram_bytes=4_096)
    async with client.post("/api/generate", json={"model": "big:70b"}) as resp:
        assert resp.status == 500
        assert await resp.json() == {
            "error": "model requires more system memory (4.9 KiB) than is available (4.0 KiB)"
        }


async def test_too_many_waiting_requests_is_503(make_sim: MakeSim) -> None:
    client = await make_sim(max_queue=1, token_delay_ms=30, num_chunks=10)
    body = {"model": "a:1b", "messages": [{"role": "user", "content": "hi"}]}
    running = await client.post("/api/chat", json=body)
    await running.content.readline()
    waiting = asyncio.create_task(chat(client, "a:1b"))

    async def queued() -> bool:
        async with client.get("/_sim/state") as resp:
            return bool((await resp.json())["waiting"] == 1)

    for _ in range(300):
        if await queued():
            break
        await asyncio.sleep(0.01)
    async with client.post("/api/chat", json=body) as resp:
        assert resp.status == 503
        assert await resp.json() == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }
    assert await waiting == 200
    running.close()


async def test_one_request_at_a_time_per_model(make_sim: MakeSim) -> None:
    client = await make_sim(token_delay_ms=20, num_chunks=5)
    start = asyncio.get_running_loop().time()
    assert list(await asyncio.gather(chat(client, "a:1b"), chat(client, "a:1b"))) == [200, 200]
    assert asyncio.get_running_loop().time() - start >= 2 * 4 * 0.02
