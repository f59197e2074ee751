"""The gate: while no agent is ready, requests wait in a bounded FIFO queue; an agent
becoming ready serves them in arrival order; past the limit or the time, 503 models_starting."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import httpx
import openai
import pytest

from fleetd.config import CoordinatorConfig
from fleetd.coordinator.gate import Gate
from fleetd.coordinator.inventory import Inventory
from fleetd.coordinator.metrics import Metrics
from fleetd.coordinator.pools import Pools
from fleetd.core.errors import ApiError
from fleetd.core.plugins import load_plugin
from fleetd.core.store import Store
from fleetd.core.wire import Agent, InstalledModel, Task
from tests.conftest import Fleet
from tests.inference.conftest import CHAT, EMBED, MESSAGES, agents, sim_post, start
from tests.procs import wait_until


def gateway(**settings: Any) -> tuple[Gate, Metrics]:
    metrics = Metrics()
    cls = load_plugin("fleetd.balancer", "least-busy", "coordinator.balancer")
    c = CoordinatorConfig(supported_models=[CHAT], **settings)
    inventory = Inventory(cast(Store, None))  # never flushed here
    pools = Pools(c.supported_models, {}, cls, metrics, inventory)
    return Gate(pools, c.queue_limit, c.queue_timeout_s, metrics), metrics


async def queued(gate: Gate, n: int) -> None:
    """Until ``n`` requests wait in the gate: the loop runs them up to their wait, no clock."""
    for _ in range(100):
        if gate.waiting == n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{gate.waiting} requests waiting, expected {n}")


def ready(agent_id: str, **fields: Any) -> Agent:
    return Agent(id=agent_id, name=agent_id, url="http://x", initializing=False, **fields)


async def test_waiters_are_served_in_arrival_order_when_an_agent_is_ready() -> None:
    gw, metrics = gateway(queue_timeout_s=5)
    served: list[int] = []

    async def request(i: int) -> None:
        agent_id = await gw.acquire(CHAT)
        served.append(i)
        assert agent_id == "a1"

    waiters = [asyncio.create_task(request(i)) for i in range(5)]
    await queued(gw, 5)
    assert served == [] and metrics.queue_depth._value.get() == 5
    gw.pools.agent_changed(ready("a1"))
    await asyncio.gather(*waiters)
    assert served == [0, 1, 2, 3, 4]
    assert metrics.queue_depth._value.get() == 0
    assert gw.pools.in_flight["a1"] == 5  # counted from the moment each was handed the agent


async def test_queue_limit_and_timeout_answer_503_models_starting() -> None:
    gw, metrics = gateway(queue_timeout_s=0.3, queue_limit=2)
    waiting = [asyncio.create_task(gw.acquire(CHAT)) for _ in range(2)]
    await queued(gw, 2)
    with pytest.raises(ApiError) as full:
        await gw.acquire(CHAT)
    assert full.value.status == 503 and full.value.code == "models_starting"
    assert "queue_limit" in full.value.message and full.value.headers["Retry-After"]
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, ApiError) and outcome.code == "models_starting"
        assert "queue_timeout_s" in outcome.message and outcome.headers["Retry-After"]
    assert metrics.queue_depth._value.get() == 0 and gw.waiting == 0  # nothing left behind


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gw, metrics = gateway(queue_timeout_s=5)
    task = asyncio.create_task(gw.acquire(CHAT))
    await queued(gw, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert metrics.queue_depth._value.get() == 0 and gw.waiting == 0
    gw.pools.agent_changed(ready("a1"))
    assert gw.pools.in_flight == {}


async def test_unknown_model_is_404_without_waiting_and_installed_ones_wait() -> None:
    gw, _ = gateway(queue_timeout_s=0.1)
    with pytest.raises(ApiError) as err:
        await gw.acquire("other:1b")
    assert err.value.status == 404 and "other:1b" in err.value.message
    gw.pools.inventory.report("offline-agent", [InstalledModel(name="other:1b", size=1)])
    with pytest.raises(ApiError) as waited:
        await gw.acquire("other:1b")
    assert waited.value.code == "models_starting"


def test_requests_wait_while_every_agent_initializes(fleet: Fleet) -> None:
    """503 with Retry-After once the wait ends, the queue bounded, then served once ready."""
    setup = start(
        fleet,
        sim_args=("--bandwidth", "1"),  # the supported models' download stalls
        preinstall=(),
        wait=False,
        queue_timeout_s=3,
        queue_limit=1,
    )
    coord, sim = setup.coordinator, setup.sims[0]
    wait_until(
        lambda: [a for a in agents(coord) if a["initializing"]], what="an initializing agent"
    )
    outcome: dict[str, Any] = {}

    def ask(key: str) -> None:
        started = time.monotonic()
        with openai.OpenAI(base_url=coord.url + "/v1", api_key="x", max_retries=0) as c:
            try:
                c.chat.completions.create(model=CHAT, messages=MESSAGES)  # type: ignore[arg-type]
                outcome[key] = ("ok", time.monotonic() - started)
            except openai.APIStatusError as e:
                outcome[key] = (e, time.monotonic() - started)

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    wait_until(lambda: "fleetd_gate_queue_depth 1.0" in httpx.get(coord.url + "/metrics").text)
    # The queue holds one: the next request is refused at once.
    full = httpx.post(coord.url + "/api/chat", json={"model": CHAT, "messages": MESSAGES})
    assert full.status_code == 503 and full.headers["Retry-After"]
    assert full.json()["code"] == "models_starting" and isinstance(full.json()["error"], str)
    first.join(10)
    err, waited = outcome["first"]
    assert isinstance(err, openai.APIStatusError) and err.status_code == 503, err
    assert 2.8 < waited < 6
    assert err.response.headers["Retry-After"] and err.body["code"] == "models_starting"  # type: ignore[index]

    second = threading.Thread(target=ask, args=("second",))
    second.start()
    wait_until(lambda: "fleetd_gate_queue_depth 1.0" in httpx.get(coord.url + "/metrics").text)
    sim_post(sim, "/_sim/settings", {"bandwidth_bps": "2000MB"})  # downloads finish
    second.join(10)
    assert outcome["second"][0] == "ok", outcome
    assert not agents(coord)[0]["initializing"]


async def test_a_model_only_offline_agents_have_is_503_at_once_unless_on_its_way() -> None:
    gw, _ = gateway(queue_timeout_s=0.1)
    gw.pools.agents["a1"] = Agent(id="a1", name="gpu-1", url="http://x", status="offline")
    gw.pools.inventory.report("a1", [InstalledModel(name="other:1b", size=1)])
    with pytest.raises(ApiError) as err:
        await gw.acquire("other:1b")
    assert err.value.status == 503 and err.value.code == "no_agent_has_model"
    assert "gpu-1" in err.value.message and "other:1b" in err.value.message
    # A download under way: the model is on its way, so the request waits in the gate.
    gw.pools.task_changed(Task(id="t1", agent_id="a2", model="other:1b", status="downloading"))
    with pytest.raises(ApiError) as waited:
        await gw.acquire("other:1b")
    assert waited.value.code == "models_starting"
    gw.pools.task_changed(Task(id="t1", agent_id="a2", model="other:1b", status="failed"))
    with pytest.raises(ApiError) as again:
        await gw.acquire("other:1b")
    assert again.value.code == "no_agent_has_model"


def test_a_model_no_online_agent_has_is_503_no_agent_has_model_at_once(fleet: Fleet) -> None:
    """Only an offline agent has the model, it is not supported, nothing downloads it: no
    wait in the gate for an agent that may never come, and no "models are starting"."""
    setup = start(fleet, queue_timeout_s=60)
    coord = setup.coordinator
    setup.agents[0].kill()
    wait_until(lambda: agents(coord)[0]["status"] == "offline", what="the agent offline")
    with openai.OpenAI(base_url=coord.url + "/v1", api_key="x", max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as err:
            c.embeddings.create(model=EMBED, input="hello")
    assert err.value.status_code == 503
    body: Any = err.value.body
    assert body["code"] == "no_agent_has_model", body
    assert EMBED in body["message"] and "gpu-0" in body["message"]
    native = httpx.post(coord.url + "/api/embed", json={"model": EMBED, "input": "hi"}, timeout=10)
    assert native.status_code == 503 and native.json()["code"] == "no_agent_has_model"
    assert "no online agent has" in native.json()["error"]
    assert "Traceback" not in coord.log
