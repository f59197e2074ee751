"""Issue 18 item 5: memory is bounded by bytes: agent fields have size limits, and a stuck SSE
subscriber is dropped once its unread backlog passes a byte budget."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, Proc

AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}


def rss_mb(p: Proc) -> float:
    with open(f"/proc/{p.popen.pid}/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def register(c: httpx.Client, name: str = "big") -> str:
    body = {"name": name, "url": "http://127.0.0.1:9", "gpus": [SIM_GPU]}
    r = c.post("/api/agents", headers=AGENT, json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_oversized_agent_fields_are_400(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    with httpx.Client(base_url=coord.url, timeout=10) as c:
        agent_id = register(c)
        base = {"initializing": True, "ready_models": 0, "total_models": 4}
        for field, value in (
            ("status_message", "x" * 200_000),
            ("loaded_models", ["m:latest"] * 10_000),
            ("loaded_models", ["m" * 100_000]),
            ("gpus", [SIM_GPU] * 1000),
        ):
            r = c.post(
                f"/api/agents/{agent_id}/heartbeat", headers=AGENT, json={**base, field: value}
            )
            assert r.status_code == 400, field
            assert field in r.json()["error"]["message"]
        big = {"name": "n" * 1_000_000, "url": "http://127.0.0.1:9", "gpus": [SIM_GPU]}
        r = c.post("/api/agents", headers=AGENT, json=big)
        assert r.status_code == 400 and "name" in r.json()["error"]["message"]


def test_a_stuck_sse_subscriber_is_dropped_and_memory_stays_bounded(fleet: Fleet) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=600)
    url = urlsplit(coord.url)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((url.hostname, url.port))
    head = f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    stuck.sendall(head.encode())
    try:
        with httpx.Client(base_url=coord.url, timeout=30) as c:
            agent_id = register(c)
            # Each heartbeat carries the largest fields allowed: a ~130 KB agent event.
            hb = {
                "initializing": True,
                "ready_models": 0,
                "total_models": 4,
                "loaded_models": [f"{i:03d}" + "m" * 500 for i in range(256)],
            }
            sent = 0
            while "dropping an SSE subscriber" not in coord.log:
                assert sent < 2000, "the stuck subscriber was never dropped"
                hb["status_message"] = f"{sent:04d}" + "s" * 1000
                r = c.post(f"/api/agents/{agent_id}/heartbeat", headers=AGENT, json=hb)
                assert r.status_code == 200, r.text
                sent += 1
            rss = rss_mb(coord)
            print(f"{sent} heartbeats of ~130 KB with one stuck subscriber: RSS {rss:.0f} MB")
            assert rss < 300
            # The stuck client's connection was closed, not kept.
            stuck.settimeout(10)
            while stuck.recv(65536):
                pass
            assert c.get("/healthz").status_code == 200
    finally:
        stuck.close()
    assert coord.log.count("dropping an SSE subscriber") == 1
    assert "Traceback" not in coord.log
