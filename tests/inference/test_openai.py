"""Issue 11: the ``openai`` SDK, unchanged, against the coordinator; the agent's own ``/v1``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.inference.conftest import (
    CHAT,
    EMBED,
    MESSAGES,
    SUPPORTED,
    Setup,
    loaded,
    sim_post,
)
from tests.procs import wait_until

REPLY = "This is a simulated reply from Ollama."


@pytest.fixture
def client(shared: Setup) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=shared.coordinator.url + "/v1", api_key="unused") as c:
        yield c


def test_models_list_is_exactly_the_supported_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == SUPPORTED
    assert client.models.retrieve(CHAT).id == CHAT
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(EMBED)


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    assert r.choices[0].message.content == REPLY
    assert r.model == CHAT and r.usage is not None and r.usage.completion_tokens > 0


def test_chat_completion_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert len(chunks) > 3
    assert chunks[-1].usage is not None  # the final usage chunk came through too


def test_completion_and_embeddings(client: openai.OpenAI) -> None:
    r = client.completions.create(model=CHAT, prompt="once upon a time")
    assert r.choices[0].text == REPLY
    e = client.embeddings.create(model=EMBED, input=["one", "two"])
    assert len(e.data) == 2 and len(e.data[0].embedding) > 0
    assert e.data[0].embedding != e.data[1].embedding


def test_unknown_model_is_404_naming_it(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model:7b", messages=MESSAGES)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2  # at once, not after a wait in the gate
    assert "no-such-model:7b" in str(err.value)
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "qwen2.5:0.5b", "messages": [', "malformed JSON"),
        (b'{"model": 7, "messages": []}', "model"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": "bad name!", "messages": []}', "invalid model name"),
        (b"[1, 2]", "invalid request body"),
        (b"", "empty"),
    ],
)
def test_malformed_bodies_are_400_in_openai_shape(
    shared: Setup, body: bytes, fragment: str
) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        r = httpx.post(
            shared.coordinator.url + path,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert fragment in err["message"]
        assert err["type"] == "invalid_request_error" and "code" in err and "param" in err


def test_agent_models_carry_readiness(shared: Setup) -> None:
    r = httpx.get(shared.agents[0].url + "/v1/models", timeout=5)
    data = r.json()["data"]
    assert [m["id"] for m in data] == SUPPORTED
    assert all(m["downloaded"] and m["loaded"] and m["ready"] for m in data)


def test_agent_serves_v1_itself(shared: Setup) -> None:
    with openai.OpenAI(base_url=shared.agents[0].url + "/v1", api_key="x") as c:
        r = c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
        assert r.choices[0].message.content == REPLY
        with pytest.raises(openai.NotFoundError) as err:
            c.chat.completions.create(model="no-such-model:7b", messages=MESSAGES)  # type: ignore[arg-type]
        assert "no-such-model:7b" in str(err.value)
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="", messages=MESSAGES)  # type: ignore[arg-type]


@pytest.fixture
def slow_tokens(shared: Setup) -> Iterator[None]:
    """Each token takes 300 ms on the shared sim, for the duration of one test."""
    sim_post(shared.sims[0], "/_sim/settings", {"token_delay_ms": 300})
    try:
        yield
    finally:
        sim_post(shared.sims[0], "/_sim/settings", {"token_delay_ms": 0})


@pytest.mark.usefixtures("slow_tokens")
def test_chunks_pass_through_both_hops_as_they_come(client: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    arrivals = [time.monotonic() - started for _ in stream]
    # 8 tokens 300 ms apart: buffering anywhere would deliver them all at the end.
    assert arrivals[0] < 1.0, arrivals
    assert arrivals[-1] - arrivals[0] > 1.5, arrivals


def _busy(shared: Setup) -> bool:
    return bool(loaded(shared.sims[0]).get(CHAT, {}).get("busy"))


@pytest.mark.usefixtures("slow_tokens")
def test_client_disconnect_cancels_the_generation(shared: Setup) -> None:
    url = shared.coordinator.url + "/v1/chat/completions"
    # Streaming: read one chunk, hang up.
    with httpx.stream("POST", url, json={"model": CHAT, "messages": MESSAGES, "stream": True}) as r:
        next(r.iter_bytes())
        assert _busy(shared)
    wait_until(lambda: not _busy(shared), 1.2, what="the sim to stop generating")
    # Not streaming: give up before the reply (8 x 300 ms) is done.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={"model": CHAT, "messages": MESSAGES}, timeout=httpx.Timeout(0.6))
    wait_until(lambda: not _busy(shared), 1.2, what="the sim to stop generating")


def test_metrics_count_inference(shared: Setup, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model:7b", messages=MESSAGES)  # type: ignore[arg-type]
    text = httpx.get(shared.coordinator.url + "/metrics", timeout=5).text
    assert 'fleetd_inference_requests_total{outcome="ok",path="/v1/chat/completions"}' in text
    assert 'outcome="model_not_found",path="/v1/chat/completions"' in text
    assert 'fleetd_inference_latency_seconds_count{path="/v1/chat/completions"}' in text
    assert "fleetd_agent_requests_in_flight{agent=" in text
    assert "fleetd_gate_queue_depth 0.0" in text
