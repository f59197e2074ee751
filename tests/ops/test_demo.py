"""``fleetd demo`` as a user runs it: a whole fleet comes up, serves a chat completion once an
agent is ready, and a signal stops every process it started, exit 0."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from fleetd.cli import main
from fleetd.demo import BANDWIDTH_BPS, parse_speed
from tests.ops.proctree import alive, children_of
from tests.procs import Proc, wait_until

BANNER = r"Dashboard:\s+(http://\S+)/\?token=(\S+)"
# Port 9 (discard) refuses at once: the catalog degrades without waiting for DNS or the internet.
OFFLINE_LIBRARY = "http://127.0.0.1:9"


def reap(demo: Proc, kids: set[int]) -> None:
    """Whatever a failed test left running goes: the demo's group, then each child by pid."""
    demo.kill()
    for pid in kids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_demo(*args: str) -> Proc:
    return Proc(
        ["demo", "--listen", "127.0.0.1:0", "--library-url", OFFLINE_LIBRARY, *args], name="demo"
    )


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_demo_serves_a_chat_completion_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    demo = start_demo("--agents", "2", "--speed", "100", "--data-dir", str(data))
    kids: set[int] = set()
    try:
        url, token = demo.wait_for_line(BANNER, timeout=90).groups()
        kids = children_of(demo.popen.pid)
        assert len(kids) == 5, demo.log  # a coordinator, 2 agents, 2 simulated Ollamas
        with httpx.Client(base_url=url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {token}"}

            def ready_agent() -> list[dict[str, object]]:
                agents = http.get("/api/agents", headers=auth).json()["agents"]
                return [a for a in agents if a["total_models"] and not a["initializing"]]

            wait_until(ready_agent, timeout=90, interval=0.5, what="a ready agent")
            demo.wait_for_line(r"demo-\w+: ready \(4/4 models\)", timeout=10)
            reply = http.post(
                "/v1/chat/completions",
                json={"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "Hi"}]},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"]
            agents = http.get("/api/agents", headers=auth).json()["agents"]
            assert sorted(a["name"] for a in agents) == ["demo-a100", "demo-h100"]
            assert {g["name"] for a in agents for g in a["gpus"]} == {
                "NVIDIA H100 80GB HBM3",
                "NVIDIA A100-SXM4-40GB",
            }
            login = http.get("/", params={"token": token}, follow_redirects=True)
            assert login.status_code == 200 and "fleetd_session" in http.cookies
        assert demo.stop(timeout=30) == 0, demo.log
        assert not [pid for pid in kids if alive(pid)], demo.log
    finally:
        reap(demo, kids)
    logs = {p.name: p.read_text() for p in (data / "logs").glob("*.log")}
    assert len(logs) == 5
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text}"


def test_ctrl_c_stops_the_demo_and_removes_its_temporary_dir(tmp_path: Path) -> None:
    demo = Proc(
        ["demo", "--agents", "1", "--listen", "127.0.0.1:0", "--library-url", OFFLINE_LIBRARY],
        env={"TMPDIR": str(tmp_path)},
        name="demo",
    )
    kids: set[int] = set()
    try:
        demo.wait_for_line(BANNER, timeout=90)
        logs = Path(demo.wait_for_line(r"Logs:\s+(\S+)").group(1))
        assert logs.is_dir() and logs.parent.parent == tmp_path
        kids = children_of(demo.popen.pid)
        assert len(kids) == 3, demo.log
        demo.popen.send_signal(signal.SIGINT)
        assert demo.wait_exit(30) == 0, demo.log
        assert not [pid for pid in kids if alive(pid)]
        assert not logs.parent.exists()
    finally:
        reap(demo, kids)


def test_a_killed_demo_takes_its_children_with_it(tmp_path: Path) -> None:
    """Even kill -9 leaves nothing behind: children ask the kernel for SIGTERM on our death."""
    demo = start_demo("--agents", "1", "--data-dir", str(tmp_path / "demo"))
    kids: set[int] = set()
    try:
        demo.wait_for_line(BANNER, timeout=90)
        kids = children_of(demo.popen.pid)
        assert len(kids) == 3, demo.log
        os.kill(demo.popen.pid, signal.SIGKILL)
        demo.popen.wait(10)
        wait_until(lambda: not [p for p in kids if alive(p)], timeout=30, what="children gone")
    finally:
        reap(demo, kids)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("1", BANDWIDTH_BPS), ("2x", 2 * BANDWIDTH_BPS), ("0.5", BANDWIDTH_BPS / 2), ("50MB", 50e6)],
)
def test_speed_is_a_multiplier_or_a_rate(text: str, rate: float) -> None:
    assert parse_speed(text) == pytest.approx(rate)


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "MB"])
def test_a_bad_speed_is_refused_naming_the_option(bad: str) -> None:
    result = CliRunner().invoke(main, ["demo", "--speed", bad])
    assert result.exit_code == 2
    assert re.search(r"Invalid value for '--speed'", result.output), result.output


def test_the_banner_explains_and_the_catalog_is_the_simulated_registry(tmp_path: Path) -> None:
    """Issue 24: the Ollama host, that any API key works, the registry's models; a catalog
    read from the simulator's own library pages, not degraded, with models one can pull."""
    demo = Proc(
        ["demo", "--agents", "1", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")],
        env={"FLEETD_API_KEYS": ""},
        name="demo",
    )
    kids: set[int] = set()
    try:
        url, token = demo.wait_for_line(BANNER, timeout=90).groups()
        kids = children_of(demo.popen.pid)
        demo.wait_for_line(r"Press Ctrl-C to stop")
        assert f"OLLAMA_HOST={url}" in demo.log
        assert "OPENAI_API_KEY=anything" in demo.log
        assert "llama3.2:1b" in demo.log and "gpt-oss:120b" in demo.log
        with httpx.Client(base_url=url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {token}"}
            catalog = http.get("/api/models/catalog", headers=auth).json()
            assert catalog["degraded"] is False, catalog
            assert {"gpt-oss", "llama3.2", "qwen2.5"} <= {m["name"] for m in catalog["models"]}
            tags = http.get("/api/models/catalog/llama3.2", headers=auth).json()["tags"]
            assert [t["name"] for t in tags] == ["llama3.2:1b"] and tags[0]["size"] > 0
            # Any key works while FLEETD_API_KEYS is empty.
            r = http.get("/v1/models", headers={"Authorization": "Bearer anything"})
            assert r.status_code == 200, r.text
        assert demo.stop(timeout=30) == 0, demo.log
    finally:
        reap(demo, kids)
