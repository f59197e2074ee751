"""Shutdown tells the truth: requests waiting in the gate get 503 ``shutting_down``, and
streams cut by a stopping coordinator or agent end with an error event saying so."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, MESSAGES, SUPPORTED, start
from tests.procs import wait_until

SLOW_SIM = ("--token-delay-ms", "200", "--num-chunks", "1000")
"""Replies that outlast the shutdown grace period: 1,000 tokens, one every 200 ms."""


def test_requests_waiting_in_the_gate_get_503_shutting_down(fleet: Fleet) -> None:
    coord = fleet.coordinator(supported_models=SUPPORTED, queue_timeout_s=120)
    outcome: dict[str, httpx.Response] = {}

    def ask() -> None:
        body = {"model": CHAT, "messages": MESSAGES}
        outcome["r"] = httpx.post(coord.url + "/api/chat", json=body, timeout=60)

    waiter = threading.Thread(target=ask)
    waiter.start()
    wait_until(lambda: "fleetd_gate_queue_depth 1.0" in httpx.get(coord.url + "/metrics").text)
    coord.popen.send_signal(signal.SIGTERM)
    waiter.join(30)
    r = outcome["r"]
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "shutting_down"
    assert "coordinator is shutting down" in r.json()["error"]
    assert coord.wait_exit() == 0


def _stream_until_cut(url: str, body: dict[str, Any], stop: Any) -> list[str]:
    """Stream ``body``; once the first line arrived call ``stop``; all lines read."""
    lines: list[str] = []
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            if len(lines) == 1:
                stop()
    return lines


def test_a_stopping_coordinator_ends_its_streams_saying_so(fleet: Fleet) -> None:
    setup = start(fleet, 1, sim_args=SLOW_SIM)
    coord = setup.coordinator
    body = {"model": CHAT, "messages": MESSAGES}
    lines = _stream_until_cut(
        coord.url + "/api/chat", body, lambda: coord.popen.send_signal(signal.SIGTERM)
    )
    last = json.loads(lines[-1])
    assert last["code"] == "shutting_down", lines[-3:]
    assert "coordinator is shutting down" in last["error"]
    assert "offline" not in last["error"]
    assert coord.wait_exit() == 0


def test_a_stopping_agent_ends_its_streams_saying_so_even_when_signalled_twice(
    fleet: Fleet,
) -> None:
    setup = start(fleet, 1, sim_args=SLOW_SIM)
    agent = setup.agents[0]

    def stop_twice() -> None:
        agent.popen.send_signal(signal.SIGTERM)
        agent.wait_for_line("agent shutting down")
        agent.popen.send_signal(signal.SIGTERM)  # as a supervisor or script may

    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    lines = _stream_until_cut(agent.url + "/v1/chat/completions", body, stop_twice)
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "shutting_down", lines[-3:]
    assert "agent is shutting down" in error["message"]
    assert agent.wait_exit() == 0
    assert "agent already shutting down" in agent.log
