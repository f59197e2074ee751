"""Issue 3 end to end: real coordinator and agent processes talking HTTP on loopback."""

from __future__ import annotations

import os
import stat

import httpx
import pytest

from tests.conftest import Fleet
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, admin, wait_until


def agents(url: str) -> list[dict]:
    with admin(url) as c:
        r = c.get("/api/agents")
        r.raise_for_status()
        return r.json()["agents"]


def test_agents_register_heartbeat_and_are_listed(fleet: Fleet) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=3)
    a1 = fleet.agent(coord.url, name="gpu-a")
    a2 = fleet.agent(coord.url, name="gpu-b", gpus=[SIM_GPU, SIM_GPU])
    listed = wait_until(lambda: len(agents(coord.url)) == 2 and agents(coord.url), what="2 agents")
    by_name = {a["name"]: a for a in listed}
    assert by_name["gpu-a"]["url"] == a1.url and by_name["gpu-b"]["url"] == a2.url
    assert len(by_name["gpu-b"]["gpus"]) == 2
    assert by_name["gpu-b"]["gpus"][0]["memory_bytes"] == SIM_GPU["memory_bytes"]
    for a in listed:
        assert a["status"] == "online"
        assert {"id", "initializing", "ready_models", "total_models", "last_seen"} <= a.keys()
        assert a["total_models"] == 4  # the default supported list
    with admin(coord.url) as c:
        detail = c.get(f"/api/agents/{by_name['gpu-a']['id']}").json()
        assert detail["id"] == by_name["gpu-a"]["id"]
        assert "requests_in_flight" in detail
        r = c.get("/api/agents/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_agent"
    # heartbeats keep coming: last_seen moves
    first = by_name["gpu-a"]["last_seen"]
    wait_until(
        lambda: next(a for a in agents(coord.url) if a["name"] == "gpu-a")["last_seen"] != first,
        what="a newer heartbeat",
    )
    assert a1.stop() == 0 and a2.stop() == 0
    assert coord.stop() == 0


def test_agent_without_gpu_is_refused_and_exits(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    a = fleet.agent(coord.url, gpus=[], gpu={"probe": "none"}, wait=False)
    code = a.wait_exit(20)
    assert code != 0
    refusal = [line for line in a.lines if "refused" in line and "GPU" in line]
    assert len(refusal) == 1, a.log
    assert "Traceback" not in a.log
    assert agents(coord.url) == []
    # gpu_required is decided before anything else about the agent is checked
    with httpx.Client(base_url=coord.url, timeout=5) as c:
        for body in (
            {"name": "x", "url": "not even a url", "gpus": []},
            {"gpus": []},
            {"name": 5, "url": 5, "gpus": []},
            {"name": "x", "url": "http://h:1"},
        ):
            r = c.post("/api/agents", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, json=body)
            assert r.status_code == 403, body
            assert r.json()["error"]["code"] == "gpu_required"


def test_registration_answers_with_the_agent_object(fleet: Fleet) -> None:
    coord = fleet.coordinator(supported_models=["qwen2.5:0.5b"])
    body = {"name": "raw", "url": "http://127.0.0.1:9/x", "gpus": [SIM_GPU], "extra": 1}
    with httpx.Client(base_url=coord.url, timeout=5) as c:
        r = c.post("/api/agents", json=body, headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        assert r.status_code == 200
        reply = r.json()
        assert reply["name"] == "raw" and reply["url"] == body["url"]
        assert reply["initializing"] is True and reply["supported_models"] == ["qwen2.5:0.5b"]
        again = c.post("/api/agents", json=body, headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        assert again.json()["id"] == reply["id"]
    assert [a["id"] for a in agents(coord.url)] == [reply["id"]]


def test_wrong_or_missing_tokens_are_401(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    body = {"name": "x", "url": "http://127.0.0.1:1", "gpus": [SIM_GPU]}
    with httpx.Client(base_url=coord.url, timeout=5) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ):
            r = c.post("/api/agents", json=body, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized"
        for headers in ({}, {"Authorization": f"Bearer {AGENT_TOKEN}"}):
            assert c.get("/api/agents", headers=headers).status_code == 401
        assert c.get("/healthz").status_code == 200
    a = fleet.agent(coord.url, env={"FLEETD_AGENT_TOKEN": "wrong"})
    a.wait_for_line(r"registration at .* refused \(HTTP 401\)")
    assert a.popen.poll() is None  # it keeps retrying rather than dying
    assert agents(coord.url) == []


def test_agent_goes_offline_after_timeout_and_comes_back(fleet: Fleet) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=1.5)
    a = fleet.agent(coord.url, name="flaky")
    wait_until(lambda: agents(coord.url), what="registration")
    data_dir = a.data_dir  # type: ignore[attr-defined]
    a.kill()
    wait_until(lambda: agents(coord.url)[0]["status"] == "offline", timeout=5, what="offline")
    agent_id = agents(coord.url)[0]["id"]
    fleet.agent(coord.url, name="flaky", data_dir=data_dir)
    wait_until(lambda: agents(coord.url)[0]["status"] == "online", what="online again")
    assert [a["id"] for a in agents(coord.url)] == [agent_id]


def test_coordinator_restart_keeps_agents_and_ids(fleet: Fleet) -> None:
    coord = fleet.coordinator(heartbeat_timeout_s=3)
    fleet.agent(coord.url, name="one")
    fleet.agent(coord.url, name="two")
    before = wait_until(lambda: len(agents(coord.url)) == 2 and agents(coord.url), what="agents")
    data_dir = coord.data_dir  # type: ignore[attr-defined]
    assert coord.stop() == 0
    # same port is not guaranteed; agents heartbeat to the old URL, so restart on it
    port = coord.url.rsplit(":", 1)[1]
    coord2 = fleet.start(
        ["--role", "coordinator", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        env={"FLEETD_ADMIN_TOKEN": ADMIN_TOKEN, "FLEETD_AGENT_TOKEN": AGENT_TOKEN},
    )
    coord2.wait_url()
    after = agents(coord2.url)
    assert {a["id"]: a["name"] for a in after} == {a["id"]: a["name"] for a in before}
    wait_until(
        lambda: (
            all(a["status"] == "online" for a in agents(coord2.url))
            and len(agents(coord2.url)) == 2
        ),
        what="both online after restart",
    )


def test_agent_restart_keeps_its_id(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    a = fleet.agent(coord.url, name="stable")
    first = wait_until(lambda: agents(coord.url), what="registration")[0]["id"]
    assert a.stop() == 0
    # a restart on another port is still the same agent (same data_dir)
    fleet.agent(coord.url, name="stable", data_dir=a.data_dir)  # type: ignore[attr-defined]
    wait_until(lambda: agents(coord.url)[0]["url"] != a.url, what="re-registration")
    listed = agents(coord.url)
    assert [x["id"] for x in listed] == [first]


def test_generated_tokens_are_owner_only_and_stable(fleet: Fleet) -> None:
    coord = fleet.coordinator(env={"FLEETD_ADMIN_TOKEN": "", "FLEETD_AGENT_TOKEN": ""})
    data_dir = coord.data_dir  # type: ignore[attr-defined]
    token = (data_dir / "admin_token").read_text().strip()
    assert stat.S_IMODE(os.stat(data_dir / "admin_token").st_mode) == 0o600
    assert token in coord.log  # shown once, at generation
    with httpx.Client(base_url=coord.url, timeout=5) as c:
        assert c.get("/api/agents", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert coord.stop() == 0
    coord2 = fleet.coordinator(
        data_dir=data_dir, env={"FLEETD_ADMIN_TOKEN": "", "FLEETD_AGENT_TOKEN": ""}
    )
    assert (data_dir / "admin_token").read_text().strip() == token
    assert token not in coord2.log


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/agents", b"{not json", 400, "malformed JSON"),
        ("/api/agents", b"", 400, "empty"),
        ("/api/agents", b'{"name": "x", "gpus": [{"name": "g", "memory_bytes": 1}]}', 400, "url"),
        (
            "/api/agents",
            b'{"name": 3, "url": "http://h:1", "gpus": [{"name":"g","memory_bytes":1}]}',
            400,
            "name",
        ),
        ("/api/agents", b"[1,2]", 400, "request body: expected object, got array"),
        (
            "/api/agents/unknown/heartbeat",
            b'{"initializing": true, "ready_models": 0, "total_models": 4}',
            404,
            "register again",
        ),
        ("/api/agents/unknown/heartbeat", b'{"initializing": "yes"}', 400, "initializing"),
        (
            "/api/agents/unknown/heartbeat",
            b'{"initializing": false, "ready_models": -1, "total_models": 4}',
            400,
            "ready_models",
        ),
        (
            "/api/agents/unknown/heartbeat",
            b'{"initializing": false, "ready_models": 1, "total_models": 4,'
            b' "gpus": [{"name": "g", "memory_bytes": 8, "utilization": 7}]}',
            400,
            "gpus[0].utilization",
        ),
        (
            "/api/agents",
            b'{"name": "x", "url": "http://h:1", "gpus": [{"name": "g", "memory_bytes": 0}]}',
            400,
            "gpus[0].memory_bytes",
        ),
    ],
)
def test_bad_input_is_a_json_4xx_naming_the_problem(
    fleet: Fleet, path: str, body: bytes, status: int, needle: str
) -> None:
    coord = fleet.coordinator()
    with httpx.Client(base_url=coord.url, timeout=5) as c:
        r = c.post(path, content=body, headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]
    assert agents(coord.url) == []
    assert "Traceback" not in coord.log


def test_metrics_and_healthz(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    fleet.agent(coord.url)
    wait_until(lambda: agents(coord.url), what="registration")
    with httpx.Client(base_url=coord.url, timeout=5) as c:
        wait_until(lambda: "fleetd_heartbeats_received_total" in c.get("/metrics").text)
        text = c.get("/metrics").text
    assert 'fleetd_agents{status="online"} 1.0' in text
    assert "fleetd_http_requests_total" in text


def test_an_invalid_model_name_is_refused_before_anything_else(fleet: Fleet) -> None:
    coord = fleet.coordinator()
    with admin(coord.url) as c:
        for body in (
            {"model": "Bad Name!", "agents": 5},
            {"model": "Bad Name!", "agents": "all", "if_installed": "never"},
        ):
            r = c.post("/api/distributions", json=body)
            assert r.status_code == 400
            assert r.json()["error"]["message"] == "model: invalid model name 'Bad Name!'"
        r = c.post("/api/distributions", content=b"x" * (65 << 20))
        assert r.status_code == 413
        assert "64 MiB" in r.json()["error"]["message"]
