"""Issue 13: Ollama's own API through the coordinator, with the ``ollama`` library unchanged
and with raw NDJSON over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import pytest

from tests.inference.conftest import (
    CHAT,
    CHAT2,
    EMBED,
    MESSAGES,
    SUPPORTED,
    Setup,
    loaded,
    resident_forever,
    sim_state,
)
from tests.procs import ADMIN_TOKEN

REPLY = "This is a simulated reply from Ollama."


@pytest.fixture
def client(shared: Setup) -> Iterator[ollama.Client]:
    c = ollama.Client(host=shared.coordinator.url, timeout=10)
    yield c
    c._client.close()


def test_chat_and_generate_streaming_and_not(client: ollama.Client) -> None:
    r = client.chat(model=CHAT, messages=MESSAGES)
    assert r.message.content == REPLY and r.done
    parts = list(client.chat(model=CHAT, messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == REPLY
    assert len(parts) > 3 and parts[-1].done and not parts[0].done
    g = client.generate(model=CHAT2, prompt="hi")
    assert g.response == REPLY and g.eval_count
    gparts = list(client.generate(model=CHAT2, prompt="hi", stream=True))
    assert "".join(p.response for p in gparts) == REPLY and gparts[-1].done


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    e = client.embed(model=EMBED, input=["a", "b"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) > 0
    legacy = client.embeddings(model=EMBED, prompt="a")
    assert len(legacy.embedding) == len(e.embeddings[0])


def test_tags_ps_show_version(client: ollama.Client, shared: Setup) -> None:
    names = [m.model for m in client.list().models]
    assert names[: len(SUPPORTED)] == SUPPORTED  # supported first
    assert EMBED in names
    raw = httpx.get(shared.coordinator.url + "/api/tags", timeout=5).json()["models"]
    assert {"name", "model", "size", "digest", "details", "modified_at"} <= raw[0].keys()
    assert raw[0]["size"] > 0 and len(raw[0]["digest"]) == 64

    assert set(SUPPORTED) <= {m.model for m in client.ps().models}
    ps = httpx.get(shared.coordinator.url + "/api/ps", timeout=5).json()["models"]
    assert all(m["agent"]["name"] and m["agent"]["id"] for m in ps)
    assert {"expires_at", "size_vram"} <= ps[0].keys()

    show = client.show(CHAT)
    assert show.details is not None and show.details.family == "qwen2"
    for url in (shared.coordinator.url, shared.agents[0].url):
        assert httpx.get(url + "/api/version", timeout=5).json()["version"] == "0.12.3"


def test_unknown_model_is_404_naming_it(client: ollama.Client) -> None:
    calls = [
        lambda: client.chat(model="no-such:1b", messages=MESSAGES),
        lambda: list(client.chat(model="no-such:1b", messages=MESSAGES, stream=True)),
        lambda: client.generate(model="no-such:1b", prompt="x"),
        lambda: client.embed(model="no-such:1b", input="x"),
        lambda: client.show("no-such:1b"),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404 and "no-such:1b" in err.value.error


def test_raw_ndjson_stream_and_bad_bodies(shared: Setup) -> None:
    url = shared.coordinator.url
    with httpx.stream("POST", url + "/api/chat", json={"model": CHAT, "messages": MESSAGES}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])
    for body in (b'{"model": ', b'{"model": ["x"]}', b'{"prompt": "x"}', b'{"model": "a b"}'):
        r2 = httpx.post(url + "/api/generate", content=body, timeout=5)
        assert r2.status_code == 400, r2.text
        assert isinstance(r2.json()["error"], str)  # Ollama's shape, not OpenAI's


def test_keep_alive_cannot_unload_a_supported_model(client: ollama.Client, shared: Setup) -> None:
    sim = shared.sims[0]
    loads = sim_state(sim)["loads"][CHAT]
    client.generate(model=CHAT, keep_alive=0)  # Ollama's "unload now"
    client.chat(model=CHAT, messages=MESSAGES, keep_alive="5m")
    list(client.chat(model=CHAT, messages=MESSAGES, keep_alive=0, stream=True))
    client.embed(model=EMBED, input="x", keep_alive="1h")  # not supported: passes through
    state = loaded(sim)
    assert resident_forever(state[CHAT])
    assert sim_state(sim)["loads"][CHAT] == loads  # never unloaded, so never reloaded
    assert state[EMBED]["keep_alive_s"] == 3600
    client.embed(model=EMBED, input="x", keep_alive=0)
    state = loaded(sim)
    assert EMBED not in state and resident_forever(state[CHAT])


def test_model_management_is_refused_clearly(client: ollama.Client, shared: Setup) -> None:
    for call in (
        lambda: client.copy(CHAT, "mine:1b"),
        lambda: client.create(model="mine:1b", from_=CHAT),
        lambda: client.push("mine:1b"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 501 and "does not" in err.value.error
    for admin_only in (lambda: client.pull(CHAT), lambda: client.delete(CHAT)):
        with pytest.raises(ollama.ResponseError) as denied:
            admin_only()
        assert denied.value.status_code == 401
    with ollama.Client(host=shared.coordinator.url, headers={"Authorization": "Bearer nope"}) as c:
        with pytest.raises(ollama.ResponseError) as wrong:
            c.pull(CHAT)
    assert wrong.value.status_code == 401
    with ollama.Client(
        host=shared.coordinator.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as c:
        assert c.pull(CHAT).status == "success"  # installed everywhere already
        with pytest.raises(ollama.ResponseError) as supported:
            c.delete(CHAT)  # the fleet must hold it: take it off the supported list first
        assert supported.value.status_code == 409 and "supported" in supported.value.error
