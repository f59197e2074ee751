"""``GET /api/models/catalog`` and ``/api/models/catalog/{name}`` on a real coordinator, with
ollama.com played by a local server serving fixture pages (tests/plugins/fixtures)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.procs import admin, wait_until
from tests.web.conftest import Library, closed_port_url

FIXTURE_MODELS = {"qwen3-coder", "mistral-small3.2", "embeddinggemma", "magistral"}


def get_catalog(url: str) -> tuple[dict[str, Any], float]:
    with admin(url) as c:
        t0 = time.perf_counter()
        r = c.get("/api/models/catalog")
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return r.json(), elapsed


def test_catalog_lists_the_library_and_marks_supported_models(
    fleet: Fleet, library: Library
) -> None:
    coord = fleet.coordinator(library_url=library.url, registry_url=library.url)
    body, cold = get_catalog(coord.url)
    assert cold < 10, f"cold catalog took {cold:.2f} s (spec S4: at most 10 s)"
    assert body["source"] == "ollama-library"
    assert body["degraded"] is False
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == FIXTURE_MODELS
    assert models["qwen3-coder"]["supported"] is True  # qwen3-coder:30b is a default
    assert models["magistral"]["supported"] is False
    assert models["magistral"]["description"].startswith("Magistral is a small")
    assert "30b" in models["qwen3-coder"]["sizes"]
    assert "qwen3-coder:30b" in body["supported_models"]
    with httpx.Client(base_url=coord.url) as anon:
        assert anon.get("/api/models/catalog").status_code == 401
        assert anon.get("/api/models/catalog/magistral").status_code == 401


def test_warm_catalog_answers_from_memory(fleet: Fleet, library: Library) -> None:
    coord = fleet.coordinator(library_url=library.url, registry_url=library.url)
    get_catalog(coord.url)
    hits = library.hits.get("/library", 0)
    library.mode, library.delay = "slow", 5.0  # a refresh now would show in the timings
    with admin(coord.url) as c:
        timings = []
        for _ in range(30):
            t0 = time.perf_counter()
            r = c.get("/api/models/catalog")
            timings.append(time.perf_counter() - t0)
            assert r.status_code == 200
    # Not a speed test: waiting on the (5 s) library would take seconds, memory does not.
    assert max(timings) < library.delay / 2, f"a warm answer waited {max(timings):.1f} s"
    assert library.hits.get("/library", 0) == hits, "a warm answer went to the library"


def test_catalog_is_kept_in_the_database_across_restarts(fleet: Fleet, library: Library) -> None:
    coord = fleet.coordinator(library_url=library.url, registry_url=library.url)
    get_catalog(coord.url)
    data_dir = coord.data_dir  # type: ignore[attr-defined]
    assert coord.stop() == 0
    library.mode, library.delay = "slow", 5.0
    again = fleet.coordinator(data_dir=data_dir, library_url=library.url, registry_url=library.url)
    body, elapsed = get_catalog(again.url)
    assert body["source"] == "ollama-library" and body["degraded"] is False
    assert {m["name"] for m in body["models"]} == FIXTURE_MODELS
    # Not a speed test: waiting on the (5 s) library would take seconds, the database does not.
    assert elapsed < library.delay / 2, f"the restarted coordinator waited {elapsed:.1f} s"


def test_refresh_failure_keeps_the_last_good_copy(fleet: Fleet, library: Library) -> None:
    coord = fleet.coordinator(
        library_url=library.url, registry_url=library.url, catalog_refresh_s=0.5
    )
    get_catalog(coord.url)
    library.mode, library.delay = "slow", 5.0
    time.sleep(0.6)  # older than catalog_refresh_s: the next read starts a refresh
    body, elapsed = get_catalog(coord.url)  # stale: served at once, refresh in background
    assert body["source"] == "ollama-library" and {m["name"] for m in body["models"]} == (
        FIXTURE_MODELS
    )
    assert elapsed < library.delay / 2, f"a stale answer waited {elapsed:.1f} s for the refresh"
    library.mode = "down"  # the refresh under way fails once its delay is over

    def marked_stale() -> Any:
        b, _ = get_catalog(coord.url)
        return b if b["stale"] else None

    stale = wait_until(marked_stale, timeout=10, what="the failed refresh to be reported")
    assert "503" in stale["reason"]
    assert stale["degraded"] is False and {m["name"] for m in stale["models"]} == FIXTURE_MODELS
    coord.wait_for_line(r"model catalog: library unavailable .*serving the last good copy")


def test_library_down_falls_back_to_the_fleet_installed_models(fleet: Fleet) -> None:
    sim = fleet.sim("--preinstall", "llama3.2:1b", "--preinstall", "qwen2.5:0.5b")
    coord = fleet.coordinator(
        library_url=closed_port_url(),
        registry_url=sim.url,
        supported_models=["qwen2.5:0.5b"],
    )
    fleet.agent(coord.url, ollama=sim.url, registry_url=sim.url)

    def fleet_catalog() -> Any:
        body, _ = get_catalog(coord.url)
        return body if any(m["name"] == "llama3.2" for m in body["models"]) else None

    body = wait_until(fleet_catalog, timeout=15, what="the agent's models in the catalog")
    assert body["source"] == "fleet"
    assert body["degraded"] is True
    assert "127.0.0.1" in body["reason"]  # names the unreachable library
    models = {m["name"]: m for m in body["models"]}
    assert [t["name"] for t in models["llama3.2"]["tags"]] == ["llama3.2:1b"]
    assert models["llama3.2"]["size"] > 0
    assert models["qwen2.5"]["supported"] is True
    assert models["llama3.2"]["supported"] is False
    coord.wait_for_line(r"model catalog: library unavailable .*serving the fleet's installed")
    assert "Traceback" not in coord.log

    with admin(coord.url) as c:
        r = c.get("/api/models/catalog/llama3.2:1b")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert detail["degraded"] is True and detail["source"] == "fleet"
        assert detail["tags"][0]["name"] == "llama3.2:1b" and detail["tags"][0]["size"] > 0
        r = c.get("/api/models/catalog/not-anywhere")
        assert r.status_code == 503 and r.json()["error"]["code"] == "catalog_unavailable"


def test_changed_page_layout_degrades_instead_of_crashing(fleet: Fleet, library: Library) -> None:
    library.mode = "layout"
    coord = fleet.coordinator(library_url=library.url, registry_url=library.url)
    body, _ = get_catalog(coord.url)
    assert body["source"] == "fleet" and body["degraded"] is True
    assert "layout" in body["reason"]
    assert "Traceback" not in coord.log


def test_model_tags_with_exact_sizes_are_cached(fleet: Fleet, library: Library) -> None:
    coord = fleet.coordinator(library_url=library.url, registry_url=library.url)
    with admin(coord.url) as c:
        r = c.get("/api/models/catalog/magistral")
        assert r.status_code == 200, r.text
        m = r.json()
        tags = {t["name"]: t["size"] for t in m["tags"]}
        assert tags["magistral:latest"] == 14_000_000_000
        assert tags["magistral:24b-small-2506-q4_K_M"] == 1_300_000_000
        assert "magistral:bad tag!" not in tags
        assert m["description"].startswith("Magistral")
        hits = library.hits.get("/library/magistral/tags", 0)
        library.mode = "down"
        t0 = time.perf_counter()
        again = c.get("/api/models/catalog/magistral:24b")  # same model, any tag
        assert time.perf_counter() - t0 < 0.5
        assert again.status_code == 200 and again.json()["tags"] == m["tags"]
        assert library.hits.get("/library/magistral/tags", 0) == hits
        # The listing now knows magistral's size too.
        library.mode = "ok"
        listing = {x["name"]: x for x in c.get("/api/models/catalog").json()["models"]}
        assert listing["magistral"]["size"] == 14_000_000_000


def test_invalid_name_is_400_and_unknown_is_404(fleet: Fleet, library: Library) -> None:
    coord = fleet.coordinator(library_url=library.url, registry_url=library.url)
    down = fleet.coordinator(library_url=closed_port_url(), registry_url=library.url)
    for url in (coord.url, down.url):
        with admin(url) as c:
            for bad in ("bad name", "a:b:c", "-leading-dash", "x" * 81):
                r = c.get(f"/api/models/catalog/{bad}")
                assert r.status_code == 400, (url, bad, r.text)
                assert r.json()["error"]["code"] == "invalid_model_name"
                assert repr(bad) in r.json()["error"]["message"]
    with admin(coord.url) as c:
        r = c.get("/api/models/catalog/no-such-model")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        assert "no-such-model" in r.json()["error"]["message"]
