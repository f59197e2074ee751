"""Inference against ollama.md ("Other endpoints", "OpenAI-compatible API"): native and /v1
shapes, streaming, errors — checked by hand and through the official client libraries."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import ollama
import openai
import pytest
from aiohttp.test_utils import TestClient

from fleetd.sim.options import SimOptions
from fleetd.sim.server import build_app

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]
LLM, EMBED = "llama3.2:1b", "nomic-embed-text:latest"
HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**overrides: Any) -> Client:
        settings: dict[str, Any] = {
            "size_scale": 1e-6,
            "preinstalled": [LLM, EMBED],
            "token_delay_ms": 1,
            "num_chunks": 4,
        }
        client: Client = await aiohttp_client(build_app(SimOptions(**(settings | overrides))))
        return client

    return make


async def ndjson(client: Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.post(path, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in resp.content]


async def sse(client: Client, path: str, body: dict[str, Any]) -> list[str]:
    async with client.post(path, json=body | {"stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    events = text.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e[len("data: ") :] for e in events[:-1]]


COUNTERS = {"total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration"}


async def test_chat_streams_chunks_then_done_with_counters(make_sim: MakeSim) -> None:
    client = await make_sim()
    lines = await ndjson(client, "/api/chat", {"model": LLM, "messages": HI})
    assert len(lines) == 5
    for chunk in lines[:-1]:
        assert chunk["done"] is False and chunk["model"] == LLM
        assert chunk["message"]["role"] == "assistant" and chunk["message"]["content"]
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert COUNTERS <= set(last) and last["eval_count"] == 4


async def test_chat_without_streaming_is_one_object(make_sim: MakeSim) -> None:
    client = await make_sim()
    body = {"model": LLM, "messages": HI, "stream": False}
    async with client.post("/api/chat", json=body) as resp:
        reply = await resp.json()
    assert reply["done"] is True and COUNTERS <= set(reply)
    assert reply["message"]["content"] == "This is a simulated"


async def test_generate_streams_and_not(make_sim: MakeSim) -> None:
    client = await make_sim()
    lines = await ndjson(client, "/api/generate", {"model": LLM, "prompt": "hi"})
    assert "".join(line["response"] for line in lines) == "This is a simulated"
    assert lines[-1]["done"] is True and "context" in lines[-1]
    body = {"model": LLM, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    async with client.post("/api/generate", json=body) as resp:
        reply = await resp.json()
    assert reply["response"] == "This is" and reply["done_reason"] == "length"


async def test_unknown_model_is_404_try_pulling(make_sim: MakeSim) -> None:
    client = await make_sim()
    for path, body in (
        ("/api/chat", {"model": "nope", "messages": HI}),
        ("/api/generate", {"model": "nope", "prompt": "x"}),
        ("/api/embed", {"model": "nope", "input": "x"}),
    ):
        async with client.post(path, json=body) as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": 'model "nope" not found, try pulling it first'}


async def test_an_embedding_model_does_not_chat(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/chat", json={"model": EMBED, "messages": HI}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": f'"{EMBED}" does not support chat'}


async def test_embed_takes_a_string_or_a_list(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/embed", json={"model": EMBED, "input": "a"}) as resp:
        one = await resp.json()
    async with client.post("/api/embed", json={"model": EMBED, "input": ["a", "b"]}) as resp:
        two = await resp.json()
    assert {"model", "embeddings", "total_duration", "load_duration"} <= set(one)
    assert two["embeddings"][0] == one["embeddings"][0] != two["embeddings"][1]
    assert all(math.isclose(sum(v * v for v in e), 1.0) for e in two["embeddings"])
    async with client.post("/api/embed", json={"model": EMBED, "input": [1]}) as resp:
        assert resp.status == 400 and await resp.json() == {"error": "invalid input type"}


async def test_legacy_embeddings(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/embeddings", json={"model": EMBED, "prompt": "a"}) as resp:
        body = await resp.json()
    async with client.post("/api/embed", json={"model": EMBED, "input": "a"}) as resp:
        assert body == {"embedding": (await resp.json())["embeddings"][0]}


async def test_v1_chat_streams_sse_with_usage_and_done(make_sim: MakeSim) -> None:
    client = await make_sim()
    body = {"model": LLM, "messages": HI, "stream_options": {"include_usage": True}}
    events = await sse(client, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1])
    assert content == "This is a simulated"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    plain = await sse(client, "/v1/chat/completions", {"model": LLM, "messages": HI})
    assert plain[-1] == "[DONE]" and "usage" not in json.loads(plain[-2])


async def test_v1_completions_and_embeddings(make_sim: MakeSim) -> None:
    client = await make_sim()
    events = await sse(client, "/v1/completions", {"model": LLM, "prompt": "hi"})
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["object"] == "text_completion"
    async with client.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b"]}) as resp:
        body = await resp.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]


async def test_v1_errors_have_openais_shape(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/v1/chat/completions", json={"model": "x", "messages": HI}) as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "error": {
                "message": 'model "x" not found, try pulling it first',
                "type": "api_error",
                "param": None,
                "code": None,
            }
        }
    async with client.post("/v1/chat/completions", json={"model": LLM, "messages": []}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    async with client.post("/v1/chat/completions", data=b"{oops") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_v1_models_lists_installed_models(make_sim: MakeSim) -> None:
    empty = await make_sim(preinstalled=[])
    async with empty.get("/v1/models") as resp:
        assert await resp.json() == {"object": "list", "data": None}
    client = await make_sim()
    async with client.get("/v1/models") as resp:
        data = (await resp.json())["data"]
    assert {m["id"] for m in data} == {LLM, EMBED}
    assert all(m["object"] == "model" and m["owned_by"] == "library" for m in data)
    async with client.get(f"/v1/models/{LLM}") as resp:
        assert (await resp.json())["id"] == LLM
    async with client.get("/v1/models/nope") as resp:
        assert resp.status == 404 and "error" in await resp.json()


async def test_client_leaving_stops_generation(make_sim: MakeSim) -> None:
    client = await make_sim(token_delay_ms=50, num_chunks=100)
    resp = await client.post("/api/chat", json={"model": LLM, "messages": HI})
    await resp.content.readline()
    resp.close()

    async def idle() -> bool:
        async with client.get("/_sim/state") as state:
            return not any(m["busy"] for m in (await state.json())["loaded"])

    for _ in range(50):  # generation would go on for 5 s; it must stop within 1 s
        if await idle():
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("generation went on after the client left")


async def test_official_ollama_client_reads_every_shape(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with ollama.AsyncClient(host=str(client.make_url(""))) as lib:
        await _exercise_ollama_client(lib)


async def _exercise_ollama_client(lib: ollama.AsyncClient) -> None:
    assert [m.model for m in (await lib.list()).models] == [EMBED, LLM]
    reply = await lib.chat(model=LLM, messages=HI)
    assert reply.message.content and reply.done
    stream = await lib.chat(model=LLM, messages=HI, stream=True)
    parts = [p.message.content or "" async for p in stream]
    assert "".join(parts) == "This is a simulated"
    assert (await lib.generate(model=LLM, prompt="x", keep_alive=-1)).done
    (loaded,) = (await lib.ps()).models
    assert loaded.expires_at is not None and loaded.expires_at.year > 2300
    assert len((await lib.embed(model=EMBED, input=["a", "b"])).embeddings) == 2
    assert (await lib.show(LLM)).capabilities == ["completion", "tools"]
    progress = [p async for p in await lib.pull("qwen2.5:0.5b", stream=True)]
    assert progress[-1].status == "success"
    with pytest.raises(ollama.ResponseError) as missing:
        await lib.chat(model="nope", messages=HI)
    assert missing.value.status_code == 404


async def test_official_openai_client_reads_every_shape(make_sim: MakeSim) -> None:
    client = await make_sim()
    lib = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused")
    messages: Any = HI
    async with lib:
        done = await lib.chat.completions.create(model=LLM, messages=messages)
        assert done.choices[0].message.content == "This is a simulated"
        stream = await lib.chat.completions.create(
            model=LLM,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        vectors = await lib.embeddings.create(model=EMBED, input="a")
        assert len(vectors.data[0].embedding) > 0
        assert {m.id async for m in lib.models.list()} == {LLM, EMBED}
        with pytest.raises(openai.NotFoundError):
            await lib.chat.completions.create(model="nope", messages=messages)
