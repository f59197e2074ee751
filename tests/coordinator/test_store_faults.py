"""The coordinator with a store that cannot write (a full disk) or callers that hang up while
their write waits: clear 503s, /healthz says so, everything works again by itself afterwards."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiohttp.test_utils import TestClient

from fleetd.config import Config, CoordinatorConfig, Secrets
from fleetd.coordinator.app import build_app
from fleetd.core.store import STORE
from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, admin, wait_until

AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def registration(n: int) -> dict[str, Any]:
    return {"name": f"gpu-{n}" + "x" * 100, "url": f"http://127.0.0.1:9/{n}", "gpus": [SIM_GPU]}


async def test_full_disk_answers_503_and_healthz_degraded_until_space_returns(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    config = Config(
        coordinator=CoordinatorConfig(data_dir=str(tmp_path)),
        secrets=Secrets(admin_token=ADMIN_TOKEN, agent_token=AGENT_TOKEN),
    )
    app = await build_app(config)
    client: TestClient = await aiohttp_client(app)
    store: Any = app[STORE]
    pages = await store._submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    # SQLite's own page limit fails writes exactly as a full disk does.
    await store._submit(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchone())
    for n in range(2000):
        r = await client.post("/api/agents", json=registration(n), headers=AGENT)
        if r.status != 200:
            break
    assert r.status == 503, await r.text()
    body = await r.json()
    assert body["error"]["code"] == "store_unavailable"
    assert "database or disk is full" in body["error"]["message"]
    r = await client.get("/healthz")
    assert r.status == 503
    health = await r.json()
    assert health["status"] == "degraded"
    assert "database or disk is full" in health["store"]

    await store._submit(lambda c: c.execute("PRAGMA max_page_count=1000000").fetchone())
    r = await client.get("/healthz")
    assert (r.status, await r.json()) == (200, {"status": "ok"})
    r = await client.post("/api/agents", json=registration(999), headers=AGENT)
    assert r.status == 200, await r.text()


def _abort(url: str, method: str, path: str, token: str, body: bytes = b"") -> None:
    """Send a whole request, then hang up before the answer (a user navigating away)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_clients_hanging_up_during_store_writes_do_not_stop_the_coordinator(
    fleet: Fleet,
) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=1.0)
    sim = fleet.sim()
    agent = fleet.agent(coord.url, sim.url)
    with admin(coord.url) as c:
        agent_id = wait_until(lambda: [a["id"] for a in c.get("/api/agents").json()["agents"]])[0]
        for n in range(400):
            body = msgspec.json.encode(registration(n))
            _abort(coord.url, "POST", "/api/agents", AGENT_TOKEN, body)
            _abort(coord.url, "GET", f"/api/agents/{agent_id}/models", ADMIN_TOKEN)
        r = httpx.post(f"{coord.url}/api/agents", json=registration(1000), headers=AGENT)
        assert r.status_code == 200, r.text
        assert c.get("/healthz").json() == {"status": "ok"}
        agent.kill()
        wait_until(
            lambda: c.get(f"/api/agents/{agent_id}").json()["status"] == "offline",
            what="the offline sweep to see the killed agent",
        )
    assert coord.stop() == 0
