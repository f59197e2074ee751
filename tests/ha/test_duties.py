"""Duties that run once among coordinators sharing one PostgreSQL: the new holder of the lock
delivers the orders its predecessor could not, and a catalog refresh saved by one coordinator
is used by the others instead of reading the library again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import Fleet
from tests.distribution.conftest import SMALL, distribute, tasks
from tests.ha.conftest import agent_on, pair
from tests.procs import AGENT_TOKEN, SIM_GPU, admin, wait_until
from tests.web.conftest import Library

EXTRA = "nomic-embed-text:latest"


class StandInAgent:
    """An agent's order endpoint (``POST /fleetd/tasks``) that answers 503 until ``accepting``,
    then takes orders; counts both by task id. Nothing else: it sends no heartbeats."""

    def __init__(self) -> None:
        self.accepting = False
        self.refused: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)))
                if self.path != "/fleetd/tasks":
                    self._reply(404, {"error": {"message": "not here", "code": "not_found"}})
                    return
                task_id = body["task_id"]
                seen = stand_in.accepted if stand_in.accepting else stand_in.refused
                seen[task_id] = seen.get(task_id, 0) + 1
                if stand_in.accepting:
                    update = {"task_id": task_id, "status": "queued", "attempt": body["attempt"]}
                    self._reply(200, update)
                else:
                    self._reply(503, {"error": {"message": "busy", "code": "unavailable"}})

            def _reply(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def stand_in() -> Iterator[StandInAgent]:
    s = StandInAgent()
    yield s
    s.close()


def test_the_new_lock_holder_delivers_an_order_its_predecessor_could_not(
    fleet: Fleet, pg_url: str, stand_in: StandInAgent
) -> None:
    a, b = pair(fleet, pg_url, heartbeat_timeout_s=60)  # online without heartbeats
    installed = [{"name": m, "size": 1000} for m in SMALL]  # nothing to order on its own
    reg = {"name": "stand-in", "url": stand_in.url, "gpus": [SIM_GPU], "models": installed}
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    r = httpx.post(b.url + "/api/agents", json=reg, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    agent_id = r.json()["id"]
    wait_until(lambda: agent_on(a, agent_id), what="the agent on A")

    [t] = distribute(a, EXTRA, [agent_id]).json()["tasks"]
    wait_until(lambda: stand_in.refused.get(t["id"]), what="A's order, refused")
    wait_until(lambda: any(x["id"] == t["id"] for x in tasks(b)), what="the task on B")
    a.kill()
    stand_in.accepting = True

    b.wait_for_line("now runs the offline sweep and order retries")
    wait_until(lambda: stand_in.accepted.get(t["id"]), 20, what="the order delivered by B")
    assert [x["status"] for x in tasks(b) if x["id"] == t["id"]] == ["queued"]


def test_a_catalog_refresh_saved_by_one_is_used_by_the_other(fleet: Fleet, pg_url: str) -> None:
    library = Library().start()
    try:
        # B starts before A reads the library: it has nothing cached of its own.
        a, b = pair(fleet, pg_url, library_url=library.url, registry_url=library.url)
        with admin(a.url) as cl:
            first = cl.get("/api/models/catalog").json()
        assert first["source"] == "ollama-library" and first["models"]
        assert library.hits.get("/library") == 1
        with admin(b.url) as cl:
            second = cl.get("/api/models/catalog").json()
        assert second["source"] == "ollama-library" and second["degraded"] is False
        assert second["fetched_at"] == first["fetched_at"]  # A's copy
        assert [m["name"] for m in second["models"]] == [m["name"] for m in first["models"]]
        assert library.hits.get("/library") == 1  # B did not read the library
    finally:
        library.close()
