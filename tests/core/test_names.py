"""Ollama's model-name rule (ollama.md, Basics)."""

from __future__ import annotations

import pytest

from fleetd.core.names import InvalidModelName, normalize, split


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-oss:20b", "gpt-oss:20b"),
        ("llama3", "llama3:latest"),
        ("library/llama3:8b", "llama3:8b"),
        ("registry.ollama.ai/library/mistral:7b-q4_K_M", "mistral:7b-q4_K_M"),
        ("myns/model:v1.2", "myns/model:v1.2"),
        ("host.example:5000/ns/m:t", "host.example:5000/ns/m:t"),
        ("Qwen_X:13b-q2_K", "Qwen_X:13b-q2_K"),
    ],
)
def test_valid_names_normalize_keeping_case(name: str, expected: str) -> None:
    assert normalize(name) == expected


@pytest.mark.parametrize(
    "name",
    ["", "bad name", "-lead", "a:b:c", "ns.dot/m", "m:" + "x" * 81, "a/b/c/d", "m:", ":t", "a/"],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidModelName):
        normalize(name)


def test_split_gives_registry_repository_and_tag() -> None:
    assert split("gpt-oss:20b") == ("library/gpt-oss", "20b")
    assert split("ns/m") == ("ns/m", "latest")
