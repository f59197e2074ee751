"""Helpers for the distribution tests: a small fleet, sim counters, SSE capture, restarts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import TOKENS_ENV, Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, Proc, admin, wait_until, write_toml

SMALL = ["llama3.2:1b", "qwen2.5:0.5b"]
"""Supported models of these tests: two small ones, so a whole fleet is ready in a second."""
PREINSTALLED = [arg for m in SMALL for arg in ("--preinstall", m)]
"""sim-ollama arguments that make an agent ready at once, whatever the download speed."""
SLOW = [*PREINSTALLED, "--size-scale", "0.01", "--bandwidth", "1MB"]
"""A download to watch in flight: nomic-embed-text (2.7 MB) takes about 3 s."""


def sim_state(sim: Proc) -> dict[str, Any]:
    r = httpx.get(sim.url + "/_sim/state", timeout=5)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def pulls(sim: Proc, model: str) -> int:
    return int(sim_state(sim)["pulls"].get(model, 0))


def agents(c: Proc) -> list[dict[str, Any]]:
    with admin(c.url) as cl:
        result: list[dict[str, Any]] = cl.get("/api/agents").json()["agents"]
        return result


def wait_agent(c: Proc, timeout: float = 20, **want: Any) -> dict[str, Any]:
    """The single agent of ``c`` once its fields have the values in ``want``."""

    def check() -> dict[str, Any] | None:
        for a in agents(c):
            if all(a.get(k) == v for k, v in want.items()):
                return a
        return None

    result: dict[str, Any] = wait_until(check, timeout, 0.1, what=f"an agent with {want}")
    return result


def tasks(c: Proc, **filters: str) -> list[dict[str, Any]]:
    with admin(c.url) as cl:
        r = cl.get("/api/tasks", params=filters)
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["tasks"]
        return result


def task(c: Proc, task_id: str) -> dict[str, Any]:
    with admin(c.url) as cl:
        r = cl.get(f"/api/tasks/{task_id}")
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result


def wait_task(c: Proc, task_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        t = task(c, task_id)
        if t["status"] == status:
            return t
        if t["status"] in ("completed", "failed", "cancelled"):
            raise AssertionError(f"task ended {t['status']} instead of {status}: {t}")
        return None

    result: dict[str, Any] = wait_until(check, timeout, 0.05, what=f"task {task_id} {status}")
    return result


def distribute(c: Proc, model: str, agents: str | list[str], **opts: str) -> httpx.Response:
    with admin(c.url) as cl:
        return cl.post("/api/distributions", json={"model": model, "agents": agents, **opts})


def ready_fleet(
    fleet: Fleet, *sim_args: str, coordinator: dict[str, Any] | None = None, **agent: Any
) -> tuple[Proc, Proc, Proc, str]:
    """sim + coordinator (SMALL supported) + one agent, waited until ready; returns its id."""
    sim = fleet.sim("--max-loaded-models", "8", *sim_args, wait=False)
    c = fleet.coordinator(wait=False, **{"supported_models": SMALL, **(coordinator or {})})
    sim.wait_url()
    c.wait_url()
    a = fleet.agent(c.url, ollama=sim.url, registry_url=sim.url, **agent)
    info = wait_agent(c, initializing=False)
    return sim, c, a, info["id"]


def restart_coordinator(fleet: Fleet, old: Proc, **settings: Any) -> Proc:
    """Start a coordinator on ``old``'s port and data_dir (agents know only that URL)."""
    data_dir: Path = old.data_dir  # type: ignore[attr-defined]
    settings.setdefault("mirror", {"enabled": False})
    cfg = write_toml(data_dir.parent / f"{data_dir.name}.toml", {"coordinator": settings})
    port = urlsplit(old.url).port
    args = ["--role", "coordinator", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"]
    args += ["--data-dir", str(data_dir)]
    p = fleet.start(args, env=dict(TOKENS_ENV), name="coordinator")
    p.data_dir = data_dir  # type: ignore[attr-defined]
    p.wait_url()
    return p


def agent_queue(a: Proc) -> dict[str, Any]:
    r = httpx.get(
        a.url + "/fleetd/tasks", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=5
    )
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


class Events:
    """``GET /api/events`` read in a thread: every message with the monotonic time it came."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        self.sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.sock.settimeout(0.2)
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        """Set once the ``retry`` line came: the coordinator subscribed us before sending it."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if b"retry: " in block:
                    self.subscribed.set()
                kind, data = "", ""
                for raw in block.decode(errors="replace").splitlines():
                    if raw.startswith("event: "):
                        kind = raw[7:]
                    elif raw.startswith("data: "):
                        data = raw[6:]
                if kind and data:
                    with self._lock:
                        self.items.append((time.monotonic(), kind, json.loads(data)))

    def tasks(self, task_id: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [
                (t, obj) for t, kind, obj in self.items if kind == "task" and obj["id"] == task_id
            ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def events() -> Iterator[Any]:
    opened: list[Events] = []

    def open_(url: str) -> Events:
        ev = Events(url)
        opened.append(ev)
        return ev

    yield open_
    for ev in opened:
        ev.close()


class _Handler(BaseHTTPRequestHandler):
    """An "Ollama" whose pull stream turns to garbage after its first line."""

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._json({"version": "0.12.3"})
        elif self.path in ("/api/tags", "/api/ps"):
            self._json({"models": []})
        elif "/manifests/" in self.path:
            blob = {"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1000}
            self._json({"schemaVersion": 2, "config": blob, "layers": [blob]})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/api/pull":
            self._json({"error": "not found"}, 404)
            return
        body = b'{"status":"pulling manifest"}\n<html>502 Bad Gateway</html>\n'
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def garbage_ollama() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def no_tracebacks(fleet: Fleet) -> Iterator[None]:
    """Expected failures are one log line each; a traceback in any process log is a bug."""
    yield
    for p in fleet.procs:
        assert "Traceback" not in p.log, f"{p.name} logged a traceback:\n{p.log}"
