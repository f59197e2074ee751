"""A client that leaves before its answer starts is no error: sim-ollama logs no traceback."""

from __future__ import annotations

import json
import socket

import httpx

from tests.conftest import Fleet

MODEL = "qwen2.5:0.5b"


def _leave_early(url: str, path: str, body: dict[str, object]) -> None:
    """Send the whole request, then reset the connection before any answer."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_clients_leaving_while_the_model_loads_log_no_traceback(fleet: Fleet) -> None:
    # The model takes a while to load, so every client below is gone before its reply starts.
    sim = fleet.sim("--preinstall", MODEL, "--load-ms", "500", "--token-delay-ms", "5")
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(5):
        _leave_early(sim.url, "/api/chat", {"model": MODEL, "messages": messages})
        _leave_early(
            sim.url, "/v1/chat/completions", {"model": MODEL, "messages": messages, "stream": True}
        )
        _leave_early(sim.url, "/api/generate", {"model": MODEL, "prompt": "hi"})
    r = httpx.post(f"{sim.url}/api/chat", json={"model": MODEL, "messages": messages}, timeout=30)
    assert r.status_code == 200
    assert sim.stop() == 0
    assert "Traceback" not in sim.log
    assert "unexpected error" not in sim.log
