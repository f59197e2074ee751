"""The simulator's pull stream and registry against ollama.md ("Pull", "Registry manifest")."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from fleetd.sim.options import SimOptions
from fleetd.sim.server import build_app

Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]
MODEL = "gpt-oss:20b"
SIZE = 13_793  # gpt-oss:20b at size_scale 1e-6


@pytest.fixture
def make_sim(aiohttp_client: Any) -> MakeSim:
    async def make(**overrides: Any) -> Client:
        fast: dict[str, Any] = {
            "size_scale": 1e-6,
            "bandwidth_bps": 200_000,
            "chunk_interval_s": 0.01,
            "token_delay_ms": 1,
        }
        client: Client = await aiohttp_client(build_app(SimOptions(**(fast | overrides))))
        return client

    return make


async def pull_lines(client: Client, model: str = MODEL) -> tuple[int, list[dict[str, Any]]]:
    async with client.post("/api/pull", json={"model": model}) as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return resp.status, [json.loads(line) async for line in resp.content]


async def state(client: Client) -> dict[str, Any]:
    async with client.get("/_sim/state") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def test_pull_stream_has_ollamas_shape_and_order(make_sim: MakeSim) -> None:
    client = await make_sim()
    status, lines = await pull_lines(client)
    assert status == 200
    assert lines[0] == {"status": "pulling manifest"}
    assert [line["status"] for line in lines[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layers = lines[1:-3]
    for line in layers:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", line["digest"])
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert set(line) <= {"status", "digest", "total", "completed"}
    digests = list(dict.fromkeys(line["digest"] for line in layers))
    assert 2 <= len(digests) <= 5
    # Layers download at once: their lines interleave rather than come one after another.
    assert [line["digest"] for line in layers[: len(digests)]] == digests


async def test_completed_is_omitted_while_zero(make_sim: MakeSim) -> None:
    client = await make_sim()
    _, lines = await pull_lines(client)
    first = lines[1]
    assert "completed" not in first and first["total"] > 0
    assert all(line.get("completed", 1) > 0 for line in lines)


async def test_totals_add_up_to_the_registry_manifest(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.get("/v2/library/gpt-oss/manifests/20b") as resp:
        assert resp.status == 200
        manifest = await resp.json(content_type=None)
    assert manifest["schemaVersion"] == 2
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    assert size == SIZE
    weights = max(manifest["layers"], key=lambda layer: layer["size"])
    assert weights["size"] > 0.9 * size
    _, lines = await pull_lines(client)
    totals = {line["digest"]: line["total"] for line in lines if "digest" in line}
    last = {line["digest"]: line.get("completed", 0) for line in lines if "digest" in line}
    assert sum(totals.values()) == size == sum(last.values())
    async with client.get("/api/tags") as resp:
        assert (await resp.json())["models"][0]["size"] == size


async def test_digests_are_stable_per_model(make_sim: MakeSim) -> None:
    one, two = await make_sim(), await make_sim()
    for path in ("/v2/library/gpt-oss/manifests/20b", "/v2/library/llama3.2/manifests/1b"):
        async with one.get(path) as a, two.get(path) as b:
            assert await a.read() == await b.read()


async def test_registry_answers_404_for_unknown_models(make_sim: MakeSim) -> None:
    client = await make_sim()
    for path in ("/v2/library/nope/manifests/1b", "/v2/library/gpt-oss/manifests/21b"):
        async with client.get(path) as resp:
            assert resp.status == 404
            assert await resp.json() == {
                "errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]
            }


async def test_unknown_model_is_an_error_line_with_http_200(make_sim: MakeSim) -> None:
    client = await make_sim()
    status, lines = await pull_lines(client, "nope:1b")
    assert status == 200
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]


async def test_injected_failure_ends_with_an_error_line(make_sim: MakeSim) -> None:
    client = await make_sim()
    fault = {"model": MODEL, "at": 0.5, "message": "max retries exceeded: connection reset"}
    async with client.post("/_sim/faults", json=fault) as resp:
        assert resp.status == 200
    status, lines = await pull_lines(client)
    assert status == 200
    assert lines[-1] == {"error": "max retries exceeded: connection reset"}
    assert not any(line.get("status") == "success" for line in lines)
    completed = sum(
        max(line.get("completed", 0) for line in lines if line.get("digest") == d)
        for d in {line["digest"] for line in lines if "digest" in line}
    )
    assert completed == pytest.approx(SIZE / 2, abs=2)
    # The fault hit once; the next pull resumes and succeeds.
    _, lines = await pull_lines(client)
    assert lines[-1] == {"status": "success"}


async def test_disk_fills_midway(make_sim: MakeSim) -> None:
    client = await make_sim(disk_bytes=SIZE // 2)
    status, lines = await pull_lines(client)
    assert status == 200
    error = lines[-1]["error"]
    assert re.fullmatch(r"write \S+/sha256-[0-9a-f]{64}-partial: no space left on device", error)
    assert lines[1]["status"].startswith("pulling ")  # no free-space check up front
    current = await state(client)
    assert current["partials"] == {MODEL: SIZE // 2}
    assert current["installed"] == []


async def test_pull_resumes_after_an_interruption(make_sim: MakeSim) -> None:
    client = await make_sim()
    fault = {"model": MODEL, "kind": "interrupt", "at": 0.5}
    async with client.post("/_sim/faults", json=fault) as resp:
        assert resp.status == 200
    seen: list[dict[str, Any]] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.post("/api/pull", json={"model": MODEL}) as resp:
            async for line in resp.content:
                seen.append(json.loads(line))
    assert not any("error" in line or line.get("status") == "success" for line in seen)
    assert (await state(client))["partials"][MODEL] == pytest.approx(SIZE / 2, abs=2)
    _, lines = await pull_lines(client)
    weights = next(line for line in lines if "digest" in line and line["total"] > SIZE / 2)
    assert weights["completed"] > 0  # resumed from the partial blob at once
    assert lines[-1] == {"status": "success"}
    current = await state(client)
    assert current["downloads"][MODEL] == 2
    assert current["bytes_downloaded"][MODEL] == SIZE


async def test_last_client_leaving_cancels_the_download(make_sim: MakeSim) -> None:
    client = await make_sim(bandwidth_bps=20_000)
    resp = await client.post("/api/pull", json={"model": MODEL})
    while json.loads(await resp.content.readline()).get("completed", 0) < SIZE / 10:
        pass
    resp.close()

    async def cancelled() -> bool:
        return not (await state(client))["active_pulls"]

    await eventually(cancelled)
    current = await state(client)
    kept = current["partials"][MODEL]
    assert 0 < kept < SIZE
    await asyncio.sleep(0.1)
    assert (await state(client))["partials"][MODEL] == kept  # nothing runs any more
    assert current["pulls"][MODEL] == 1 and current["installed"] == []


async def test_concurrent_pulls_share_one_download(make_sim: MakeSim) -> None:
    client = await make_sim(bandwidth_bps=50_000)
    first = asyncio.create_task(pull_lines(client))

    async def started() -> bool:
        pulls = (await state(client))["active_pulls"]
        return MODEL in pulls and pulls[MODEL]["completed"] > SIZE / 4

    await eventually(started)
    (_, second), (_, first_lines) = await asyncio.gather(pull_lines(client), first)
    assert first_lines[-1] == second[-1] == {"status": "success"}
    big = [line for line in second if "digest" in line and line["total"] > SIZE / 2]
    assert big[0]["completed"] > SIZE / 5  # joined the running download
    current = await state(client)
    assert current["pulls"][MODEL] == 2
    assert current["downloads"][MODEL] == 1
    assert current["bytes_downloaded"][MODEL] == SIZE


async def test_stream_false_blocks_and_answers_success(make_sim: MakeSim) -> None:
    client = await make_sim()
    async with client.post("/api/pull", json={"model": MODEL, "stream": False}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "success"}
    async with client.post("/api/pull", json={"model": "nope", "stream": False}) as resp:
        assert resp.status == 500
        assert await resp.json() == {"error": "pull model manifest: file does not exist"}


async def test_repull_of_an_installed_model_downloads_nothing(make_sim: MakeSim) -> None:
    client = await make_sim(preinstalled=[MODEL])
    _, lines = await pull_lines(client)
    assert all(line["completed"] == line["total"] for line in lines if "digest" in line)
    assert lines[-1] == {"status": "success"}
    current = await state(client)
    assert current["pulls"] == {MODEL: 1} and current["downloads"] == {}


@pytest.mark.parametrize(
    "name",
    ["bad name", "-lead", "a/b/c/d", "ns.dot/model", "model:", "m" * 81, "model:tag:x", ""],
)
async def test_invalid_names_are_400_before_anything(make_sim: MakeSim, name: str) -> None:
    client = await make_sim()
    async with client.post("/api/pull", json={"model": name}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "invalid model name"}
    assert (await state(client))["pulls"] == {}


async def test_bad_bodies_are_400(make_sim: MakeSim) -> None:
    client = await make_sim()
    for body in (b"", b"{not json", b'{"model": 5}'):
        async with client.post("/api/pull", data=body) as resp:
            assert resp.status == 400
            assert isinstance((await resp.json())["error"], str)


async def test_names_keep_their_case_and_default_tag(make_sim: MakeSim) -> None:
    client = await make_sim(models={"llama3:8b-instruct-q4_K_M": 5_000, "phi3": 3_000})
    _, lines = await pull_lines(client, "llama3:8b-instruct-Q4_K_M")
    assert lines[-1] == {"error": "pull model manifest: file does not exist"}
    for name in ("library/llama3:8b-instruct-q4_K_M", "phi3"):
        _, lines = await pull_lines(client, name)
        assert lines[-1] == {"status": "success"}
    async with client.get("/api/tags") as resp:
        names = {m["name"] for m in (await resp.json())["models"]}
    assert names == {"llama3:8b-instruct-q4_K_M", "phi3:latest"}


async def test_state_dir_keeps_models_and_partials_across_restarts(
    make_sim: MakeSim, tmp_path: Path
) -> None:
    client = await make_sim(state_dir=str(tmp_path))
    await pull_lines(client)
    async with client.post("/_sim/faults", json={"model": "llama3.2:1b", "at": 0.5}) as resp:
        assert resp.status == 200
    await pull_lines(client, "llama3.2:1b")
    await client.close()  # runs the app's cleanup, which saves
    again = await make_sim(state_dir=str(tmp_path))
    current = await state(again)
    assert [m["name"] for m in current["installed"]] == [MODEL]
    assert current["partials"]["llama3.2:1b"] == pytest.approx(1_321 / 2, abs=2)
