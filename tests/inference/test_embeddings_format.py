"""Issue 24: ``encoding_format: "base64"`` on ``/v1/embeddings`` is honoured, as Ollama does,
by sim-ollama and through both fleetd hops unchanged."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import openai

from tests.inference.conftest import EMBED, Setup

TEXTS = ["one", "two"]


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _same(a: list[float], b: list[float]) -> bool:
    if len(a) != len(b) or not a:
        return False
    return all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b, strict=True))


def test_base64_is_little_endian_float32_of_the_same_vectors(shared: Setup) -> None:
    url = shared.coordinator.url + "/v1/embeddings"
    plain = httpx.post(url, json={"model": EMBED, "input": TEXTS}, timeout=10).json()
    body = {"model": EMBED, "input": TEXTS, "encoding_format": "base64"}
    packed = httpx.post(url, json=body, timeout=10).json()
    for p, b in zip(plain["data"], packed["data"], strict=True):
        assert isinstance(b["embedding"], str)
        assert _same(_floats(b["embedding"]), p["embedding"])
    with openai.OpenAI(base_url=shared.coordinator.url + "/v1", api_key="any") as client:
        e = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="base64")
        got = e.data[1].embedding
        assert isinstance(got, str) and _same(_floats(got), plain["data"][1]["embedding"])


def test_unknown_encoding_format_is_400(shared: Setup) -> None:
    body = {"model": EMBED, "input": "a", "encoding_format": "hex"}
    r = httpx.post(shared.coordinator.url + "/v1/embeddings", json=body, timeout=10)
    assert r.status_code == 400 and "encoding_format" in r.json()["error"]["message"]
