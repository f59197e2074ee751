"""A forwarded inference request leaves no reference cycle behind: everything it allocated is
freed as the reply ends, not kept (request, headers, parser, writer) until the garbage
collector's next pass, whose cost then grows with the request rate.

In-process, because only the process itself can see what its garbage collector finds: the
coordinator is built and served here, in front of a minimal agent that answers as Ollama's
OpenAI API does (a whole JSON reply with ``usage``, or an SSE stream).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

from fleetd.config import Config, CoordinatorConfig, Secrets
from fleetd.coordinator.app import build_app
from fleetd.core.server import serve
from tests.procs import SIM_GPU

MODEL = "qwen2.5:0.5b"
ADMIN = "a" * 32
AGENT = "b" * 32
REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


async def chat(request: web.Request) -> web.StreamResponse:
    if not (await request.json()).get("stream"):
        return web.json_response(REPLY)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for word in ("hel", "lo"):
        chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
        await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def agent_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def coordinator_url(tmp_path: Path) -> AsyncIterator[str]:
    config = Config(
        coordinator=CoordinatorConfig(data_dir=str(tmp_path), supported_models=[MODEL]),
        secrets=Secrets(admin_token=ADMIN, agent_token=AGENT),
    )
    app = await build_app(config)
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def on_started(url: str) -> None:
        started.set_result(url)

    task = asyncio.create_task(serve(app, "127.0.0.1:0", "coordinator", on_started, stop))
    yield await asyncio.wait_for(started, 30)
    stop.set()
    assert await task == 0


async def test_inference_requests_leave_no_reference_cycles(
    coordinator_url: str, agent_url: str
) -> None:
    auth = {"Authorization": f"Bearer {AGENT}"}
    async with aiohttp.ClientSession(coordinator_url) as s:
        installed = [{"name": MODEL, "size": 1000}]  # so no download is ordered
        body = {"name": "one", "url": agent_url, "gpus": [SIM_GPU], "models": installed}
        async with s.post("/api/agents", json=body, headers=auth) as r:
            assert r.status == 200, await r.text()
            agent_id = (await r.json())["id"]
        hb = {"initializing": False, "ready_models": 1, "total_models": 1}
        async with s.post(f"/api/agents/{agent_id}/heartbeat", json=hb, headers=auth) as r:
            assert r.status == 200, await r.text()

        async def ask(stream: bool) -> None:
            req = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post("/v1/chat/completions", json={**req, "stream": stream}) as r:
                text = await r.text()
                assert r.status == 200, text
                assert ("[DONE]" in text) if stream else ('"usage"' in text)

        for stream in (False, True):  # warm: connections open, lazy state built
            await ask(stream)
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(20):
                await ask(stream=i % 2 == 1)
            gc.collect()
            kept = [o for o in gc.garbage if isinstance(o, web.BaseRequest)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert kept == [], f"{len(kept)} requests were only freed by the garbage collector"
