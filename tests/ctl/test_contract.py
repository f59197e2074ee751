"""``fleetd ctl`` against a stand-in coordinator that answers as interface.md pins the admin
API: the commands whose routes today's coordinator lacks (drain, remove, keys, usage, the
supported list, clearing tasks) send the right requests and show the answers; a coordinator
without a route says so in one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.ctl.conftest import ctl
from tests.procs import ADMIN_TOKEN

AGENTS = [
    {"id": "a1b2c3d4e5f6", "name": "gpu-0", "status": "online", "ready_models": 4,
     "total_models": 4, "gpus": [], "last_seen": "2026-01-01T00:00:00Z"},
    {"id": "a1ffffffffff", "name": "gpu-1", "status": "offline", "ready_models": 0,
     "total_models": 4, "gpus": [], "last_seen": "2026-01-01T00:00:00Z"},
]  # fmt: skip
KEYS = [
    {"id": "k1", "name": "ci", "prefix": "fk-ab", "models": [], "limits": None,
     "created_at": "2026-01-01T00:00:00Z", "last_used_at": None},
]  # fmt: skip

Handler = Callable[[dict[str, list[str]], Any], tuple[int, Any]]


class Coordinator:
    """Routes (method, path) → handler(query, body) → (status, JSON); everything it is sent
    is kept in ``seen``. A path it has no route for answers like aiohttp does in fleetd."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/api/agents"): lambda q, b: (200, {"agents": AGENTS}),
        }
        self.seen: list[tuple[str, str, dict[str, list[str]], Any]] = []
        stub = self

        class H(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                query = parse_qs(url.query)
                stub.seen.append((self.command, url.path, query, body))
                if self.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
                    status, obj = 401, {"error": {"message": "wrong", "code": "unauthorized"}}
                elif (self.command, url.path) in stub.routes:
                    status, obj = stub.routes[(self.command, url.path)](query, body)
                elif any(path == url.path for _, path in stub.routes):
                    status, obj = 405, {"error": {"message": "Method Not Allowed",
                                                  "code": "method_not_allowed"}}  # fmt: skip
                else:
                    message = f"no route for {self.command} {url.path}"
                    status, obj = 404, {"error": {"message": message, "code": "not_found"}}
                data = b"" if obj is None else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self, method: str) -> list[tuple[str, dict[str, list[str]], Any]]:
        return [(p, q, b) for m, p, q, b in self.seen if m == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stub() -> Iterator[Coordinator]:
    s = Coordinator()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_tracebacks() -> None:
    """No fleetd process here; ctl() itself checks stderr for tracebacks."""


def test_drain_and_undrain_post_to_the_agent_named_by_name_or_id_prefix(stub: Coordinator) -> None:
    for verb in ("drain", "undrain"):
        stub.routes[("POST", f"/api/agents/a1b2c3d4e5f6/{verb}")] = lambda q, b: (
            200,
            {**AGENTS[0], "draining": True},
        )
    r = ctl(stub.url, "drain", "gpu-0")
    assert r.code == 0, r.err
    assert r.out.startswith("agent gpu-0 (a1b2c3d4e5f6) is draining")
    r = ctl(stub.url, "undrain", "a1b2", "--json")
    assert r.code == 0, r.err
    assert r.json()["draining"] is True  # the answer, as the coordinator gave it
    posts = [p for p, _, _ in stub.requests("POST")]
    assert posts == ["/api/agents/a1b2c3d4e5f6/drain", "/api/agents/a1b2c3d4e5f6/undrain"]


def test_remove_refused_while_online_then_forced(stub: Coordinator) -> None:
    def delete(q: dict[str, list[str]], b: Any) -> tuple[int, Any]:
        if q.get("force") == ["true"]:
            return 204, None
        return 409, {"error": {"message": "agent gpu-0 is online", "code": "agent_online"}}

    stub.routes[("DELETE", "/api/agents/a1b2c3d4e5f6")] = delete
    r = ctl(stub.url, "remove", "gpu-0")
    assert (r.code, r.err.strip()) == (
        1,
        "fleetd ctl: agent gpu-0 is online (--force removes it anyway)",
    )
    r = ctl(stub.url, "remove", "gpu-0", "--force")
    assert (r.code, r.out.strip()) == (0, "removed agent gpu-0 (a1b2c3d4e5f6)")


def test_keys_list_create_revoke(stub: Coordinator) -> None:
    stub.routes[("GET", "/api/keys")] = lambda q, b: (200, {"keys": KEYS})
    stub.routes[("POST", "/api/keys")] = lambda q, b: (
        200,
        {**KEYS[0], "id": "k2", "name": b["name"], "key": "fk-the-secret"},
    )
    stub.routes[("DELETE", "/api/keys/k1")] = lambda q, b: (200, {"id": "k1"})
    r = ctl(stub.url, "keys")
    assert r.code == 0, r.err
    header, row = r.out.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "PREFIX", "MODELS"]
    assert row.split()[:4] == ["k1", "ci", "fk-ab", "all"] and row.endswith("never")

    r = ctl(
        stub.url, "keys", "create", "team-a", "--model", "gpt-oss:20b",
        "--requests-per-minute", "60",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert r.out.splitlines() == ["created key team-a (k2):", "fk-the-secret"]
    assert "not shown again" in r.err
    [(_, _, body)] = stub.requests("POST")
    assert body == {
        "name": "team-a",
        "models": ["gpt-oss:20b"],
        "limits": {"requests_per_minute": 60},
    }

    r = ctl(stub.url, "keys", "revoke", "ci")
    assert (r.code, r.out.strip()) == (0, "revoked key ci (k1)")
    r = ctl(stub.url, "keys", "revoke", "nope")
    assert (r.code, r.err.strip()) == (
        1,
        "fleetd ctl: unknown key 'nope': no key has that name or id (fleetd ctl keys lists them)",
    )


def test_usage_table_with_filters(stub: Coordinator) -> None:
    stub.routes[("GET", "/api/keys")] = lambda q, b: (200, {"keys": KEYS})
    rows = [
        {"key_id": "k1", "key_name": "ci", "model": "gpt-oss:20b", "requests": 3,
         "prompt_tokens": 30, "completion_tokens": 300},
        {"key_id": "k1", "key_name": "ci", "model": "qwen3-coder:30b", "requests": 1,
         "prompt_tokens": 10, "completion_tokens": 100},
    ]  # fmt: skip
    stub.routes[("GET", "/api/usage")] = lambda q, b: (200, {"usage": rows})
    r = ctl(stub.url, "usage", "--key", "ci", "--model", "gpt-oss:20b", "--since", "24h")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[1].split() == ["ci", "gpt-oss:20b", "3", "30", "300"]
    assert lines[3].split() == ["TOTAL", "4", "40", "400"]
    [(_, query, _)] = [x for x in stub.requests("GET") if x[0] == "/api/usage"]
    assert query["key"] == ["k1"] and query["model"] == ["gpt-oss:20b"]
    assert query["since"][0].endswith("Z")
    r = ctl(stub.url, "usage", "--since", "yesterday")
    assert r.code == 1 and "--since: expected an ISO 8601 time" in r.err


def test_supported_show_set_add_remove(stub: Coordinator) -> None:
    current = {"models": ["gpt-oss:20b", "qwen3-coder:30b"]}

    def put(q: dict[str, list[str]], b: Any) -> tuple[int, Any]:
        current["models"] = b["models"]
        return 200, current

    stub.routes[("GET", "/api/supported-models")] = lambda q, b: (200, current)
    stub.routes[("PUT", "/api/supported-models")] = put
    r = ctl(stub.url, "supported")
    assert r.out.splitlines() == ["gpt-oss:20b", "qwen3-coder:30b"]
    r = ctl(stub.url, "supported", "add", "gpt-oss:120b", "gpt-oss:20b")
    assert r.code == 0, r.err
    assert current["models"] == ["gpt-oss:20b", "qwen3-coder:30b", "gpt-oss:120b"]
    r = ctl(stub.url, "supported", "remove", "qwen3-coder:30b")
    assert current["models"] == ["gpt-oss:20b", "gpt-oss:120b"]
    assert r.out.strip() == "supported models (2): gpt-oss:20b, gpt-oss:120b"
    r = ctl(stub.url, "supported", "set", "llama3.2")
    assert current["models"] == ["llama3.2:latest"]
    r = ctl(stub.url, "supported", "set", "Bad Name!")
    assert (r.code, r.err.strip()) == (1, "fleetd ctl: invalid model name 'Bad Name!'")
    assert current["models"] == ["llama3.2:latest"]


def test_clear_tasks_sends_the_status(stub: Coordinator) -> None:
    stub.routes[("GET", "/api/tasks")] = lambda q, b: (200, {"tasks": []})
    stub.routes[("DELETE", "/api/tasks")] = lambda q, b: (200, {"removed": 3})
    r = ctl(stub.url, "tasks", "clear", "--status", "failed")
    assert (r.code, r.out.strip()) == (0, "removed 3 tasks")
    [(_, query, _)] = stub.requests("DELETE")
    assert query == {"status": ["failed"]}


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["drain", "gpu-0"], "draining agents"),
        (["undrain", "gpu-0"], "draining agents"),
        (["remove", "gpu-1"], "removing agents"),
        (["keys"], "managed API keys"),
        (["keys", "create", "x"], "managed API keys"),
        (["usage"], "usage accounting"),
        (["supported"], "changing the supported models at runtime"),
        (["supported", "set", "llama3.2"], "changing the supported models at runtime"),
        (["tasks", "clear"], "clearing tasks"),
    ],
)
def test_a_coordinator_without_the_route_says_so(
    stub: Coordinator, args: list[str], what: str
) -> None:
    # /api/agents/{id} and /api/tasks exist with GET only: DELETE on them is a 405.
    stub.routes[("GET", "/api/agents/a1ffffffffff")] = lambda q, b: (200, AGENTS[1])
    stub.routes[("GET", "/api/tasks")] = lambda q, b: (200, {"tasks": []})
    r = ctl(stub.url, *args)
    assert (r.code, r.out, r.err) == (
        1,
        "",
        f"fleetd ctl: this coordinator does not support {what} (upgrade it)\n",
    )
