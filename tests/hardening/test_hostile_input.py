"""Issue 18 item 4: hostile input is a 4xx naming the problem, never a 500 or a half-applied
change."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, Proc

AGENT = {"Authorization": f"Bearer {AGENT_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def raw_request(url: str, head: bytes) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers) as raw bytes; (status, body) of the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def assert_clean(coord: Proc) -> None:
    assert "Traceback" not in coord.log and "unhandled error" not in coord.log, coord.log


def test_a_non_utf8_authorization_header_is_401_not_500(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    for path in (b"/api/agents", b"/api/tags", b"/api/session"):
        status, body = raw_request(
            coord.url,
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\xc3(\r\n\r\n",
        )
        assert status in (200, 400, 401), (path, status, body)
    status, body = raw_request(
        coord.url,
        b"GET /api/agents HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\r\n\r\n",
    )
    assert status == 401 and b"unauthorized" in body
    assert_clean(coord)


def test_json_nested_too_deep_is_400(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    deep = b"[" * 100_000 + b"]" * 100_000
    with httpx.Client(base_url=coord.url, timeout=30) as c:
        for path, headers in (
            ("/api/agents", AGENT),
            ("/api/distributions", ADMIN),
            ("/api/session", {}),
            ("/api/chat", {}),
            ("/v1/chat/completions", {}),
        ):
            body = b'{"model": "x", "gpus": [{"name": "g", "memory_bytes": 1}], "x": ' + deep + b"}"
            r = c.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            assert "nested too deeply" in r.text, path
    assert_clean(coord)


def test_multipart_login_without_boundary_is_400(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    with httpx.Client(base_url=coord.url, timeout=10) as c:
        r = c.post(
            "/api/session", content=b"token=x", headers={"Content-Type": "multipart/form-data"}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_form"
        assert "boundary" in r.json()["error"]["message"]
    assert_clean(coord)


def test_numbers_out_of_range_are_400_and_nothing_is_half_applied(fleet: Fleet) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=60)
    with httpx.Client(base_url=coord.url, timeout=10) as c:
        for value in (2**70, 2**64, 2**63):
            gpu = {"name": "big", "memory_bytes": value}
            body = {"name": "ghost", "url": "http://127.0.0.1:9", "gpus": [gpu]}
            r = c.post("/api/agents", headers=AGENT, json=body)
            assert r.status_code == 400, r.text
            assert "gpus[0].memory_bytes" in r.json()["error"]["message"]
        assert c.get("/api/agents", headers=ADMIN).json()["agents"] == []  # no ghost

        ok = {"name": "real", "url": "http://127.0.0.1:9", "gpus": [SIM_GPU]}
        agent_id = c.post("/api/agents", headers=AGENT, json=ok).json()["id"]
        for field, value in (
            ("ready_models", 2**64),
            ("total_models", 2**63),
            ("requests_in_flight", -1),
            ("cpu_percent", "1e400"),
            ("memory_percent", "101"),
        ):
            hb = f'{{"initializing": true, "ready_models": 0, "total_models": 4, "{field}": {value}}}'  # noqa: E501
            r = c.post(f"/api/agents/{agent_id}/heartbeat", headers=AGENT, content=hb)
            assert r.status_code == 400, (field, r.text)
            assert field in r.json()["error"]["message"]
        # The registry's writes still reach the store: a restart shows the last good state.
        hb = {"initializing": True, "ready_models": 2, "total_models": 4, "status_message": "ok"}
        assert c.post(f"/api/agents/{agent_id}/heartbeat", headers=AGENT, json=hb).is_success
    assert coord.stop() == 0
    assert "writing agents to the store failed" not in coord.log
    assert_clean(coord)
    again = fleet.coordinator(data_dir=coord.data_dir)  # type: ignore[attr-defined]
    with httpx.Client(base_url=again.url, timeout=10) as c:
        (agent,) = c.get("/api/agents", headers=ADMIN).json()["agents"]
        assert agent["ready_models"] == 2 and agent["status_message"] == "ok"
