"""Inference over several agents: load sharing, failover, broken streams, API keys, residency."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import Fleet
from tests.inference.conftest import (
    CHAT,
    CHAT2,
    MESSAGES,
    loaded,
    requests_served,
    resident_forever,
    sim_post,
    start,
    wait_ready,
)
from tests.procs import ADMIN_TOKEN, wait_until


def chat(url: str, client: httpx.Client | None = None) -> httpx.Response:
    body = {"model": CHAT, "messages": MESSAGES}
    if client is not None:
        return client.post(url + "/v1/chat/completions", json=body)
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_two_agents_share_the_load(fleet: Fleet) -> None:
    setup = start(fleet, 2, sim_args=("--token-delay-ms", "2"))
    url = setup.coordinator.url
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16)) as c:
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: chat(url, c).status_code, range(96)))
    assert codes == [200] * 96
    served = [requests_served(s) for s in setup.sims]
    assert sum(served) == 96 and min(served) >= 30, served  # least-busy spreads them


def test_round_robin_alternates(fleet: Fleet) -> None:
    setup = start(fleet, 2, balancer="round-robin")
    for _ in range(10):
        assert chat(setup.coordinator.url).status_code == 200
    assert [requests_served(s) for s in setup.sims] == [5, 5]


def test_requests_succeed_while_one_agents_ollama_goes_down(fleet: Fleet) -> None:
    setup = start(fleet, 2, sim_args=("--token-delay-ms", "2"))
    coord, sims = setup.coordinator, setup.sims
    url = coord.url
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                codes.append(chat(url, c).status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    wait_until(lambda: len(codes) >= 40, 20, what="traffic before the outage")
    before = requests_served(sims[1])
    sim_post(sims[0], "/_sim/down")
    at_outage = len(codes)
    wait_until(lambda: len(codes) >= at_outage + 80, 30, what="traffic after the outage")
    stop.set()
    for w in workers:
        w.join(10)
    assert set(codes) == {200}, [c for c in codes if c != 200]
    assert requests_served(sims[1]) >= before + 80  # the healthy agent took over
    assert "suspect" in coord.log and "Traceback" not in coord.log
    for a in setup.agents:
        assert "Traceback" not in a.log


def test_requests_succeed_when_an_agent_dies(fleet: Fleet) -> None:
    setup = start(fleet, 2, sim_args=("--token-delay-ms", "5"))
    url = setup.coordinator.url
    with httpx.Client(timeout=30) as c, ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda _: chat(url, c).status_code, range(16)))
        running = [pool.submit(chat, url, c) for _ in range(16)]
        time.sleep(0.02)
        setup.agents[0].kill()  # kill -9, requests in flight on it
        rest = [f.result().status_code for f in running]
        after = list(pool.map(lambda _: chat(url, c).status_code, range(32)))
    assert set(first + rest + after) == {200}


def test_a_stream_broken_midway_ends_with_an_error_event(fleet: Fleet) -> None:
    setup = start(fleet, 1, sim_args=("--token-delay-ms", "200"))
    url, sim = setup.coordinator.url, setup.sims[0]
    # The agent's Ollama dies mid-stream: SSE error event, relayed by the coordinator.
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as c:
        stream = c.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        first = next(iter(stream))
        assert first.choices[0].delta.content
        sim_post(sim, "/_sim/down")
        started = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            list(stream)
        assert time.monotonic() - started < 3
        assert "failed mid-stream" in str(err.value)
    sim_post(sim, "/_sim/up")
    wait_ready(setup.coordinator, 1)
    # The agent itself dies mid-stream: NDJSON error line from the coordinator.
    with ollama.Client(host=url, timeout=10) as client:
        parts = client.chat(model=CHAT, messages=MESSAGES, stream=True)
        assert next(iter(parts)).message.content
        setup.agents[0].kill()
        started = time.monotonic()
        with pytest.raises(ollama.ResponseError) as nd:
            list(parts)
        assert time.monotonic() - started < 3
        assert "failed mid-stream" in nd.value.error


def test_api_keys_guard_inference_but_not_with_the_admin_token(fleet: Fleet) -> None:
    setup = start(fleet, 1, coordinator_env={"FLEETD_API_KEYS": "key-one, key-two"})
    url = setup.coordinator.url
    for key in ("wrong", ADMIN_TOKEN):
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):
                c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
    with openai.OpenAI(base_url=url + "/v1", api_key="key-two") as c:
        assert c.chat.completions.create(model=CHAT, messages=MESSAGES).choices  # type: ignore[arg-type]
        assert [m.id for m in c.models.list()]
    for path, body in (
        ("/api/chat", {"model": CHAT, "messages": MESSAGES}),
        ("/api/show", {"model": CHAT}),
    ):
        r = httpx.post(url + path, json=body, timeout=10)
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
    for path in ("/api/tags", "/api/ps", "/api/version"):
        assert httpx.get(url + path, timeout=10).status_code == 401
    with ollama.Client(host=url, headers={"Authorization": "Bearer key-one"}) as client:
        assert client.chat(model=CHAT, messages=MESSAGES).message.content
        assert client.list().models
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200


def test_v1_traffic_leaves_supported_models_resident(fleet: Fleet) -> None:
    setup = start(fleet, 1)
    sim = setup.sims[0]
    for _ in range(3):
        sim_post(sim, "/_sim/evict", {"model": CHAT})  # VRAM pressure, silently
        for _ in range(5):
            assert chat(setup.coordinator.url).status_code == 200
        wait_until(
            lambda: CHAT in loaded(sim) and resident_forever(loaded(sim)[CHAT]),
            5,
            what=f"{CHAT} resident for good again",
        )


def test_agent_loads_an_evicted_model_for_good_before_a_v1_request(fleet: Fleet) -> None:
    """With room for one model only, the keeper cannot hold both supported models; a /v1
    request for the evicted one (which cannot carry keep_alive) must not load it for 5 min."""
    setup = start(fleet, 1, sim_args=("--max-loaded-models", "1"), wait=False)
    agent, sim = setup.agents[0], setup.sims[0]
    agent.wait_for_line("cannot hold all supported models", 20)
    models: dict[str, Any] = httpx.get(agent.url + "/v1/models").json()
    evicted = next(m["id"] for m in models["data"] if not m["loaded"])
    r = httpx.post(
        agent.url + "/v1/chat/completions",
        json={"model": evicted, "messages": MESSAGES},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert resident_forever(loaded(sim)[evicted])
    assert evicted in (CHAT, CHAT2)


def test_ollama_busy_is_503_with_retry_after(fleet: Fleet) -> None:
    setup = start(fleet, 1, sim_args=("--token-delay-ms", "30", "--max-queue", "1"))
    agent = setup.agents[0].url
    calls = [
        ("/v1/chat/completions", {"model": CHAT, "messages": MESSAGES}),
        ("/api/chat", {"model": CHAT, "messages": MESSAGES, "stream": False}),
    ]
    with ThreadPoolExecutor(12) as pool:
        replies = list(
            pool.map(
                lambda i: httpx.post(agent + calls[i % 2][0], json=calls[i % 2][1], timeout=30),
                range(12),
            )
        )
    busy = [r for r in replies if r.status_code == 503]
    assert busy and len(busy) < 12, [r.status_code for r in replies]
    for r in busy:
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        if r.request.url.path.startswith("/v1/"):
            assert "server busy" in err["message"]
        else:
            assert "server busy" in err


def test_requests_on_a_hung_agent_move_on_when_it_goes_offline(fleet: Fleet) -> None:
    """A stopped agent accepts connections but never answers: once it is judged offline, the
    requests waiting on it go to the healthy agent and a stream it was serving ends with an
    error event, instead of every client hanging until it gives up."""
    setup = start(
        fleet, 2, balancer="round-robin", heartbeat_timeout_s=2, sim_args=("--token-delay-ms", "50")
    )
    coord, hung = setup.coordinator, setup.agents[0]
    url = coord.url
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    with httpx.Client(timeout=30) as c, ThreadPoolExecutor(6) as pool:
        # Two streams, one on each agent (round-robin), the first chunk of each already read.
        streams = [c.stream("POST", url + "/v1/chat/completions", json=body) for _ in range(2)]
        replies = [s.__enter__() for s in streams]
        chunks = [r.iter_lines() for r in replies]
        for it in chunks:
            assert next(it).startswith("data: ")
        os.killpg(hung.popen.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            waiting = [pool.submit(chat, url, c) for _ in range(4)]  # some land on the hung one
            tails = [pool.submit(lambda it=it: "\n".join(it)) for it in chunks]
            codes = [f.result().status_code for f in waiting]
            ends = sorted(f.result() for f in tails)
            took = time.monotonic() - started
        finally:
            os.killpg(hung.popen.pid, signal.SIGCONT)
            for s in streams:
                s.__exit__(None, None, None)
    assert codes == [200] * 4
    assert took < 15, f"requests were held {took:.1f}s by the hung agent"
    broken = [e for e in ends if "went offline" in e]
    assert len(broken) == 1 and '"upstream_failed"' in broken[0], ends
    assert any(e.rstrip().endswith("data: [DONE]") for e in ends), ends
    assert "ending" in coord.log and "in flight on it" in coord.log
    assert "Traceback" not in coord.log
