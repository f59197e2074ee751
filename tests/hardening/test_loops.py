"""Issue 18 item 3: an agent URL that points at the coordinator never makes it talk to itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from fleetd.coordinator.loops import MAX_HOPS, forward_mark
from tests.conftest import Fleet
from tests.procs import AGENT_TOKEN, SIM_GPU

AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def test_registering_the_coordinators_own_url_is_refused(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    port = urlsplit(coord.url).port
    with httpx.Client(base_url=coord.url, timeout=10) as c:
        for url in (coord.url, f"http://localhost:{port}/", f"http://127.0.0.1:{port}/fleetd"):
            r = c.post(
                "/api/agents", headers=AGENT, json={"name": "x", "url": url, "gpus": [SIM_GPU]}
            )
            assert r.status_code == 400, url
            assert r.json()["error"]["code"] == "agent_url_is_coordinator"
        assert r.headers["X-Fleetd-Coordinator"]
        # Another port on the same host is an agent, not us.
        other = {
            "name": "x",
            "url": f"http://127.0.0.1:{port + 1 if port < 65535 else 1}",
            "gpus": [SIM_GPU],
        }
        assert c.post("/api/agents", headers=AGENT, json=other).status_code == 200


class _Relay(BaseHTTPRequestHandler):
    """A pass-through hop in front of the coordinator (headers kept), counting requests: an
    agent URL that reaches the coordinator in a way its address check cannot see."""

    upstream = ""
    paths: ClassVar[list[str]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.paths.append(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        r = httpx.get(self.upstream + self.path, headers=headers, timeout=10)
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def relay() -> Iterator[tuple[ThreadingHTTPServer, type[_Relay]]]:
    handler = type("Relay", (_Relay,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_listing_requests_never_loop_through_a_self_pointing_agent(
    fleet: Fleet, relay: tuple[ThreadingHTTPServer, type[_Relay]]
) -> None:
    coord = fleet.coordinator()
    server, handler = relay
    handler.upstream = coord.url
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with httpx.Client(base_url=coord.url, timeout=30) as c:
        r = c.post(
            "/api/agents", headers=AGENT, json={"name": "loop", "url": url, "gpus": [SIM_GPU]}
        )
        assert r.status_code == 200
        hb = {"initializing": False, "ready_models": 4, "total_models": 4}
        agent_id = r.json()["id"]
        assert (
            c.post(f"/api/agents/{agent_id}/heartbeat", headers=AGENT, json=hb).status_code == 200
        )
        for path in ("/api/ps", "/api/tags"):
            r = c.get(path)
            assert r.status_code == 200 and r.json()["models"] == []
            assert handler.paths.count(path) == 1, handler.paths
        # An inference request forwarded to it comes back once and is refused, not relayed on.
        r = c.get("/api/ps", headers={"X-Fleetd-Coordinator": r.headers["X-Fleetd-Coordinator"]})
        assert r.status_code == 508 and r.json()["code"] == "loop_detected"
    assert "Traceback" not in coord.log


def test_a_forwarded_request_carries_the_chain_it_came_with_plus_this_coordinator() -> None:
    def mark(*values: str) -> str:
        headers = CIMultiDict(("X-Fleetd-Coordinator", v) for v in values)
        return forward_mark(make_mocked_request("POST", "/api/chat", headers=headers), "me")

    assert mark() == "me"  # a client's request
    assert mark("c1") == "c1, me"
    assert mark("c1, c2", "c3") == "c1, c2, c3, me"
    assert mark(", ".join(f"c{i}" for i in range(20))).count(",") == MAX_HOPS
