"""The mirror speaks the registry protocol a stock Ollama pulls with (a sim-ollama pulling
for real, as Ollama's download.go does), and refuses bad input with clear errors."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Fleet
from tests.mirror.conftest import (
    MODEL,
    REPO,
    manifest,
    mirror_coordinator,
    mirror_name,
    mirror_state,
    model_bytes,
    pull,
    registry_knobs,
    sha256,
    tags,
    upstream,
    upstream_served,
)
from tests.procs import wait_until


def test_ollama_pulls_through_the_mirror_and_copies_to_the_canonical_name(fleet: Fleet) -> None:
    up = upstream(fleet)
    c = mirror_coordinator(fleet, up.url)
    ollama = fleet.sim()
    name = mirror_name(c)
    assert pull(ollama, name)[-1] == {"status": "success"}
    for path, body in (("/api/copy", {"source": name, "destination": MODEL}),):
        assert httpx.post(ollama.url + path, json=body, timeout=5).status_code == 200
    assert httpx.request(
        "DELETE", ollama.url + "/api/delete", json={"model": name}, timeout=5
    ).is_success
    assert tags(ollama) == [MODEL]
    size = model_bytes(manifest(up))
    state = mirror_state(c)
    assert state["models"] == [{"name": MODEL, "bytes": size, "complete": True}]
    assert state["upstream_bytes"] == size
    assert upstream_served(up) == size
    # A second Ollama costs upstream nothing.
    assert pull(fleet.sim(), name)[-1] == {"status": "success"}
    assert upstream_served(up) == size
    assert mirror_state(c)["served_bytes"] >= 2 * size
    metrics = httpx.get(c.url + "/metrics", timeout=5).text
    line = next(x for x in metrics.splitlines() if x.startswith("fleetd_mirror_upstream_bytes_t"))
    assert float(line.split()[1]) == size


def test_range_head_and_bad_input(fleet: Fleet) -> None:
    up = upstream(fleet)
    c = mirror_coordinator(fleet, up.url)
    layer = manifest(up)["layers"][0]
    url = f"{c.url}/v2/{REPO}/blobs/{layer['digest']}"
    head = httpx.head(url, timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == layer["size"]
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.headers["Location"] == url
    assert sha256(whole.content) == layer["digest"]
    part = httpx.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{layer['size']}"
    tail = httpx.get(url, headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    for bad in ("bytes=abc", "lines=1-2", f"bytes={layer['size']}-", "bytes=5-2", "bytes=0-1,4-5"):
        r = httpx.get(url, headers={"Range": bad}, timeout=10)
        assert r.status_code == 416, bad
        assert r.json()["error"]["code"] == "bad_range"
        assert r.headers["Content-Range"] == f"bytes */{layer['size']}"
    bad_digest = httpx.get(f"{c.url}/v2/{REPO}/blobs/sha256:{'A' * 64}", timeout=10)
    assert bad_digest.status_code == 400
    assert "sha256:<64 lowercase hex>" in bad_digest.json()["error"]["message"]
    for path in (
        f"/v2/library/..%2F..%2Fetc/blobs/{layer['digest']}",
        "/v2/library/llama3.2/manifests/..%2F..%2Fx",
        f"/v2/library/llama3.2/blobs/{layer['digest'].replace('sha256:', 'sha256-')}",
    ):
        r = httpx.get(c.url + path, timeout=10)
        assert r.status_code == 400, path
        assert r.json()["error"]["code"] in ("invalid_name", "invalid_digest")
    assert httpx.get(f"{c.url}/v2/library/nope/manifests/1b", timeout=10).status_code == 404
    unknown = httpx.get(f"{c.url}/v2/{REPO}/blobs/sha256:{'0' * 64}", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "blob_unknown"
    assert httpx.post(url, timeout=10).status_code == 405  # read-only
    assert httpx.get(c.url + "/api/mirror", timeout=10).status_code == 401


def test_digest_mismatch_fails_naming_the_digest_and_the_next_try_fetches_again(
    fleet: Fleet,
) -> None:
    up = upstream(fleet)
    c = mirror_coordinator(fleet, up.url)
    digest = manifest(up)["layers"][0]["digest"]
    registry_knobs(up, corrupt=[digest])
    ollama = fleet.sim()
    last = pull(ollama, mirror_name(c))[-1]
    assert f"digest mismatch, file must be downloaded again: want {digest}" in last["error"]
    c.wait_for_line(f"{digest} from upstream failed its sha256 check")
    state = mirror_state(c)
    assert state["models"][0]["complete"] is False
    assert tags(ollama) == []
    registry_knobs(up)
    before = upstream_served(up)
    assert pull(ollama, mirror_name(c))[-1] == {"status": "success"}
    assert upstream_served(up) - before >= manifest(up)["layers"][0]["size"]
    assert mirror_state(c)["models"][0]["complete"] is True


def test_upstream_down_and_disabled_mirror(fleet: Fleet) -> None:
    c = mirror_coordinator(fleet, "http://127.0.0.1:9")
    r = httpx.get(f"{c.url}/v2/{REPO}/manifests/1b", timeout=30)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    off = fleet.coordinator(mirror={"enabled": False})
    r = httpx.get(f"{off.url}/v2/{REPO}/manifests/1b", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "mirror_disabled"
    assert mirror_state(off)["enabled"] is False


@pytest.mark.parametrize("mode", ["cdn", "location"])
def test_mirror_follows_upstream_redirects(fleet: Fleet, mode: str) -> None:
    up = upstream(fleet)
    registry_knobs(up, redirect=mode)
    c = mirror_coordinator(fleet, up.url)
    assert pull(fleet.sim(), mirror_name(c))[-1] == {"status": "success"}
    wait_until(lambda: mirror_state(c)["models"][0]["complete"], what="model complete")


def test_cache_keeps_within_max_bytes_evicting_least_recently_used(fleet: Fleet) -> None:
    up = upstream(fleet)
    llama = model_bytes(manifest(up))
    qwen = model_bytes(manifest(up, "library/qwen2.5", "0.5b"))
    c = mirror_coordinator(fleet, up.url, mirror={"max_bytes": llama + qwen // 2})
    ollama = fleet.sim()
    assert pull(ollama, mirror_name(c))[-1] == {"status": "success"}
    assert pull(ollama, mirror_name(c, "qwen2.5:0.5b"))[-1] == {"status": "success"}
    state = mirror_state(c)
    assert state["bytes_cached"] <= llama + qwen // 2
    complete = {m["name"]: m["complete"] for m in state["models"]}
    assert complete == {MODEL: False, "qwen2.5:0.5b": True}
    # The evicted model comes back from upstream on demand.
    assert pull(fleet.sim(), mirror_name(c))[-1] == {"status": "success"}
    assert {m["name"]: m["complete"] for m in mirror_state(c)["models"]}[MODEL] is True
