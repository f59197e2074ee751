"""``GET /api/history`` and the ``history`` event against a running fleet: the requests and
tokens sent show up, per agent as the agents served them, GPU figures as heartbeats carried
them, download speed while a download runs; bad input is refused."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import Fleet
from tests.inference.conftest import CHAT, requests_served, start
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, admin, wait_until

GiB = 1 << 30


def history(client: httpx.Client, **params: Any) -> dict[str, Any]:
    r = client.get("/api/history", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def total(body: dict[str, Any], name: str) -> int:
    return sum(v for v in body["series"][name] if v is not None)


def test_history_counts_what_was_sent_per_fleet_and_agent(fleet: Fleet) -> None:
    setup = start(fleet, 2, history_interval_s=1)
    coord = setup.coordinator
    before = [requests_served(sim) for sim in setup.sims]
    prompt = completion = 0
    with httpx.Client(base_url=coord.url, timeout=30) as client:
        for i in range(7):
            r = client.post(
                "/api/generate", json={"model": CHAT, "prompt": f"hi {i}", "stream": False}
            )
            assert r.status_code == 200, r.text
            prompt += r.json()["prompt_eval_count"]
            completion += r.json()["eval_count"]
        assert client.post("/api/generate", json={"model": "nope:1b"}).status_code == 404
    assert completion > 0 and prompt > 0

    with admin(coord.url) as c:
        fleet_h = wait_until(
            lambda: (b := history(c)) and total(b, "requests") == 8 and b,
            what="8 requests in the fleet's history",
        )
        assert fleet_h["interval_s"] == 1 and fleet_h["window_s"] == 360
        assert len(fleet_h["series"]["requests"]) == 360
        assert total(fleet_h, "errors") == 1
        assert total(fleet_h, "prompt_tokens") == prompt
        assert total(fleet_h, "completion_tokens") == completion
        # Static GPUs carry no figures: gaps, not zeros.
        assert set(fleet_h["series"]["gpu_memory_used_bytes"]) == {None}

        ids = {a["name"]: a["id"] for a in c.get("/api/agents").json()["agents"]}
        served = 0
        tokens = 0
        for i, sim in enumerate(setup.sims):
            mine = history(c, agent=ids[f"gpu-{i}"])
            assert mine["agent"]["name"] == f"gpu-{i}" and mine["tracked"] is True
            assert mine["gpu_memory_bytes"] == 85_899_345_920
            assert total(mine, "requests") == requests_served(sim) - before[i]
            served += total(mine, "requests")
            tokens += total(mine, "completion_tokens")
            assert total(mine, "download_bps") == 0
        assert served == 7 and tokens == completion

        # since: only the points after it.
        last = fleet_h["start"] + (len(fleet_h["series"]["requests"]) - 1)
        newer = history(c, since=last)
        assert newer["start"] == last + 1
        assert len({len(v) for v in newer["series"].values()}) == 1
        assert len(newer["series"]["requests"]) < 360


def test_gpu_figures_and_the_history_event(fleet: Fleet) -> None:
    coord = fleet.coordinator(supported_models=[CHAT], history_interval_s=1)
    gpus = [
        {"name": "A100", "memory_bytes": 80 * GiB, "memory_used_bytes": 30 * GiB},
        {"name": "A100", "memory_bytes": 80 * GiB, "memory_used_bytes": 10 * GiB},
    ]
    agent_auth = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with (
        httpx.Client(base_url=coord.url, headers=agent_auth, timeout=10) as agent,
        admin(coord.url) as c,
    ):
        body = {"name": "gpu-figures", "url": "http://127.0.0.1:9", "gpus": gpus}
        agent_id = agent.post("/api/agents", json=body).json()["id"]
        gpus[0]["utilization"] = 0.75
        gpus[1]["utilization"] = 0.25
        beat = {"initializing": False, "ready_models": 1, "total_models": 1, "gpus": gpus}
        assert agent.post(f"/api/agents/{agent_id}/heartbeat", json=beat).status_code == 200

        def sampled() -> dict[str, Any] | None:
            h = history(c, agent=agent_id)
            used = [v for v in h["series"]["gpu_memory_used_bytes"] if v is not None]
            return h if used else None

        mine = wait_until(sampled, what="a sample with the heartbeat's GPU figures")
        assert mine["series"]["gpu_memory_used_bytes"][-1] == 40 * GiB
        assert mine["series"]["gpu_utilization"][-1] == 0.5
        assert mine["gpu_memory_bytes"] == 160 * GiB
        fleet_h = history(c)
        assert fleet_h["series"]["gpu_memory_bytes"][-1] == 160 * GiB
        assert fleet_h["series"]["gpu_utilization"][-1] == 0.5

        # One small message per interval on /api/events, with the fleet's values.
        with c.stream(
            "GET", "/api/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as ev:
            kind = ""
            for line in ev.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == "history":
                    event = json.loads(line.removeprefix("data: "))
                    break
        assert event["interval_s"] == 1 and event["t"] > mine["start"]
        assert event["fleet"]["gpu_memory_used_bytes"] == 40 * GiB
        assert event["fleet"]["requests"] == 0


def test_download_speed_while_a_download_runs(fleet: Fleet) -> None:
    # llama3.2:1b is 1.32 GB; scaled to 13 MB at 2 MB/s its download takes about 6 s.
    setup = start(
        fleet,
        1,
        sim_args=("--size-scale", "0.01", "--bandwidth", "2MB"),
        preinstall=(CHAT,),
        supported_models=[CHAT],
        history_interval_s=1,
    )
    with admin(setup.coordinator.url) as c:
        [agent] = c.get("/api/agents").json()["agents"]
        order = {"model": "llama3.2:1b", "agents": [agent["id"]]}
        assert c.post("/api/distributions", json=order).status_code in (200, 201, 202)
        mine = wait_until(
            lambda: (h := history(c, agent=agent["id"])) and total(h, "download_bps") > 0 and h,
            timeout=30,
            what="a download speed in the agent's history",
        )
        fleet_h = history(c)
        assert max(v or 0 for v in fleet_h["series"]["download_bps"]) >= max(
            v or 0 for v in mine["series"]["download_bps"]
        )


def test_bad_input_is_refused(fleet: Fleet) -> None:
    coord = fleet.coordinator(supported_models=[CHAT])
    with httpx.Client(base_url=coord.url, timeout=10) as anon:
        assert anon.get("/api/history").status_code == 401
    with admin(coord.url) as c:
        r = c.get("/api/history", params={"agent": "no-such-agent"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "unknown_agent"
        assert "no-such-agent" in r.json()["error"]["message"]
        for bad in ("yesterday", "nan", "inf"):
            r = c.get("/api/history", params={"since": bad})
            assert r.status_code == 400, bad
            assert r.json()["error"]["message"].startswith("since: expected unix seconds")
