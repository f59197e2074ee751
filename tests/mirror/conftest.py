"""A registry mirror under test: an upstream sim-ollama (the registry, real blobs), a
coordinator whose registry_url is that sim, and helpers to read both sides' byte counts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.procs import Proc, admin

MODEL = "llama3.2:1b"
REPO = "library/llama3.2"
SCALE = "0.001"
"""llama3.2:1b is 1.3 MB: its weights come in 13 parts of Ollama's (scaled) part size."""


def upstream(fleet: Fleet, *extra: str) -> Proc:
    return fleet.sim("--size-scale", SCALE, "--bandwidth", "0", *extra)


def mirror_coordinator(fleet: Fleet, registry_url: str, **settings: Any) -> Proc:
    mirror = {"enabled": True, **settings.pop("mirror", {})}
    return fleet.coordinator(registry_url=registry_url, mirror=mirror, **settings)


def registry_knobs(sim: Proc, **values: Any) -> dict[str, Any]:
    r = httpx.post(sim.url + "/_sim/registry", json=values, timeout=5)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def upstream_served(sim: Proc) -> int:
    return int(httpx.get(sim.url + "/_sim/registry", timeout=5).json()["served_bytes"])


def manifest(sim: Proc, repo: str = REPO, tag: str = "1b") -> dict[str, Any]:
    r = httpx.get(f"{sim.url}/v2/{repo}/manifests/{tag}", timeout=10)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def model_bytes(m: dict[str, Any]) -> int:
    return int(m["config"]["size"]) + sum(int(x["size"]) for x in m["layers"])


def mirror_state(c: Proc) -> dict[str, Any]:
    with admin(c.url) as cl:
        r = cl.get("/api/mirror")
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result


def mirror_name(c: Proc, model: str = MODEL) -> str:
    name, tag = model.split(":")
    return f"{c.url.removeprefix('http://')}/library/{name}:{tag}"


def pull(ollama: Proc, name: str) -> list[dict[str, Any]]:
    """An Ollama pull (insecure) through the sim's HTTP API, every line of its stream."""
    import json

    with httpx.stream(
        "POST", ollama.url + "/api/pull", json={"model": name, "insecure": True}, timeout=60
    ) as r:
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def tags(ollama: Proc) -> list[str]:
    return [m["name"] for m in httpx.get(ollama.url + "/api/tags", timeout=5).json()["models"]]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ollama_models_dir(sim: Proc, root: Path, repo: str = REPO, tag: str = "1b") -> Path:
    """The layout Ollama writes, filled from the upstream registry as a pull would."""
    m = manifest(sim, repo, tag)
    path = root / "manifests" / "registry.ollama.ai" / repo / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(httpx.get(f"{sim.url}/v2/{repo}/manifests/{tag}", timeout=10).content)
    (root / "blobs").mkdir(exist_ok=True)
    for blob in [*m["layers"], m["config"]]:
        body = httpx.get(
            f"{sim.url}/v2/{repo}/blobs/{blob['digest']}", follow_redirects=True, timeout=30
        ).content
        (root / "blobs" / blob["digest"].replace(":", "-")).write_bytes(body)
    return root
