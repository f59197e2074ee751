"""Issue 24: the coordinator asks the registry once before it creates tasks. A model the
registry does not have is a 404 with no task; a registry it cannot reach is a warning."""

from __future__ import annotations

import socket

import httpx
import ollama
import pytest

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, start, wait_ready
from tests.procs import ADMIN_TOKEN, admin

NOPE = "nope:1b"
NEW = "gpt-oss:20b"
"""In the sim's registry, not preinstalled."""


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _pull(url: str, model: str, stream: bool) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = {"model": model, "stream": stream}
    return httpx.post(url + "/api/pull", json=body, headers=headers, timeout=30)


def test_unknown_model_is_404_and_creates_no_task(fleet: Fleet) -> None:
    sim = fleet.sim("--preinstall", CHAT)
    coord = fleet.coordinator(supported_models=[CHAT], registry_url=sim.url)
    url = coord.url
    fleet.agent(url, sim.url, registry_url=sim.url)
    wait_ready(coord, 1)
    with admin(url) as c:
        for stream in (False, True):
            r = _pull(url, NOPE, stream)
            assert r.status_code == 404, r.text
            message = r.json()["error"]
            assert isinstance(message, str)  # Ollama's shape
            assert (
                message.startswith("pull model manifest: file does not exist") and NOPE in message
            )
        with ollama.Client(host=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as oc:
            with pytest.raises(ollama.ResponseError) as err:
                oc.pull(NOPE)
            assert err.value.status_code == 404
        r = c.post("/api/distributions", json={"model": NOPE, "agents": "all"})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_in_registry"
        assert NOPE in r.json()["error"]["message"]
        assert c.get("/api/tasks", params={"model": NOPE}).json()["tasks"] == []
        # A model every agent has: no registry question, and the line says so.
        lines = _pull(url, CHAT, True).text.splitlines()
        assert any(f"every online agent (1) already has {CHAT}" in line for line in lines), lines
        assert not any("0 of 0" in line for line in lines), lines


def test_unreachable_registry_orders_anyway_and_says_so(fleet: Fleet) -> None:
    setup = start(fleet, 1, registry_url=_closed_port_url())
    url = setup.coordinator.url
    with admin(url) as c:
        r = c.post("/api/distributions", json={"model": NEW, "agents": "all"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["tasks"]) == 1
        assert [w["code"] for w in body["warnings"]] == ["registry_unreachable"]
        assert NEW in body["warnings"][0]["message"]
    r = _pull(url, NEW, False)  # follows the running task, nothing new to check
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    r = _pull(url, "gpt-oss-safeguard:20b", False)  # not installed here: asks, cannot, pulls
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    assert [w["code"] for w in r.json()["warnings"]] == ["registry_unreachable"]


def test_a_404_that_is_no_registrys_answer_is_not_a_no(fleet: Fleet) -> None:
    """A registry_url that points at some other web server (a plain 404) cannot say a model
    is unknown: the order goes ahead, with the warning."""
    sim = fleet.sim("--preinstall", CHAT)
    coord = fleet.coordinator(supported_models=[CHAT], registry_url=sim.url + "/not-a-registry")
    fleet.agent(coord.url, sim.url, registry_url=sim.url)
    wait_ready(coord, 1)
    with admin(coord.url) as c:
        r = c.post("/api/distributions", json={"model": NEW, "agents": "all"})
        assert r.status_code == 200, r.text
        assert len(r.json()["tasks"]) == 1
        assert [w["code"] for w in r.json()["warnings"]] == ["registry_unreachable"]
