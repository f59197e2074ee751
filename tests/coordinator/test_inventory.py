"""The inventory: every report of what an agent has installed goes in, readers get answers
and change events, and the lists survive a restart (batched writes)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from aiohttp import ClientSession

from fleetd.coordinator.inventory import Inventory
from fleetd.coordinator.metrics import Metrics
from fleetd.coordinator.pools import Pools
from fleetd.coordinator.vram import ModelSizes, fitting
from fleetd.core.gpu import Gpu
from fleetd.core.plugins import load_plugin
from fleetd.core.store import SqliteStore, Store
from fleetd.core.wire import Agent, InstalledModel


def model(name: str, size: int = 10) -> InstalledModel:
    return InstalledModel(name=name, size=size)


async def test_reports_and_completions_answer_every_reader(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    inv = Inventory(store)
    changed: list[str] = []
    inv.on_change.append(changed.append)

    inv.report("a1", [model("llama3.2"), model("Bad Name!"), model("qwen2.5:0.5b")])
    assert inv.has("a1", "llama3.2:latest")  # normalized; an invalid name is left out
    assert sorted(inv.models("a1")) == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert inv.as_of("a1") is not None and inv.as_of("a2") is None
    before = inv.reports("a1")
    inv.report("a1", [model("llama3.2:latest"), model("qwen2.5:0.5b")])  # same list
    assert inv.reports("a1") == before + 1 and changed == ["a1"]  # no change event

    inv.completed("a2", "qwen2.5:0.5b", 42, None)
    assert inv.agents_with("qwen2.5:0.5b") == {"a1", "a2"}
    assert inv.get("a2", "qwen2.5:0.5b") is not None and inv.get("a2", "x:1") is None
    assert changed == ["a1", "a2"] and inv.as_of("a2") is None  # not read from the agent

    inv.report("a1", [])  # the agent lost both
    assert inv.agents_with("qwen2.5:0.5b") == {"a2"} and not inv.agents_with("llama3.2:latest")
    assert [m.size for m in inv.holdings()] == [42]

    await inv.flush()
    await store.close()
    store = SqliteStore(tmp_path / "db")
    await store.open()
    again = Inventory(store)
    await again.load()
    assert dict(again.models("a2")) == dict(inv.models("a2")) and not again.models("a1")
    assert again.as_of("a1") == inv.as_of("a1")
    await store.close()


async def test_a_failed_write_is_written_by_the_next_flush(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    inv = Inventory(store)
    inv.report("a1", [model("llama3.2:1b")])
    real = store.save_installed
    calls = 0

    async def failing(lists: object, as_of: object) -> None:
        nonlocal calls
        calls += 1
        raise OSError("disk full")

    store.save_installed = failing  # type: ignore[method-assign,assignment]
    try:
        await inv.flush()
    except OSError:
        pass
    store.save_installed = real  # type: ignore[method-assign]
    await inv.flush()
    assert calls == 1
    assert [m.name for m in (await store.load_installed())["a1"]] == ["llama3.2:1b"]
    assert "a1" in await store.load_installed_as_of()
    await store.close()


def test_the_gateway_serves_a_newly_installed_model_before_the_next_heartbeat() -> None:
    agents: dict[str, Agent] = {}
    cls = load_plugin("fleetd.balancer", "least-busy", "coordinator.balancer")
    inv = Inventory(cast(Store, None))  # never flushed here
    gw = Pools(["llama3.2:1b"], agents, cls, Metrics(), inv)
    a = Agent(id="a1", name="gpu-1", url="http://x", initializing=False)
    agents["a1"] = a
    gw.agent_changed(a)
    assert not gw.can_serve("other:7b") and not gw.has_model("other:7b")
    inv.report("a1", [model("other:7b")])  # a progress report's list, say
    assert gw.can_serve("other:7b") and gw.has_model("other:7b")
    gw.mark_suspect("a1", "a request failed")
    inv.report("a1", [])
    assert not gw.can_serve("other:7b") and "a1" in gw.suspect


def test_figures_only_heartbeats_keep_pools_and_other_changes_still_reach_them() -> None:
    """Heartbeats that change only figures take a shortcut; everything else that decides what
    an agent serves must still move it between pools at once."""
    agents: dict[str, Agent] = {}
    cls = load_plugin("fleetd.balancer", "least-busy", "coordinator.balancer")
    inv = Inventory(cast(Store, None))
    sizes = ModelSizes(cast(ClientSession, None), "http://registry")
    gw = Pools(["llama3.2:1b"], agents, cls, Metrics(), inv)
    gw.holds = lambda a: fitting(a, ["llama3.2:1b"], sizes)
    sizes.on_learned.append(lambda: gw.set_supported(["llama3.2:1b"], agents.values()))
    gpu = Gpu(name="h100", memory_bytes=80 * 10**9, memory_used_bytes=0, utilization=0.0)
    a = Agent(id="a1", name="gpu-1", url="http://x", initializing=False, gpus=[gpu])
    a.ready_models = a.total_models = 1
    agents["a1"] = a
    gw.agent_changed(a)
    assert gw.can_serve("llama3.2:1b")
    for used in range(5):  # figures only
        a.gpus = [Gpu(name="h100", memory_bytes=80 * 10**9, memory_used_bytes=used)]
        gw.agent_changed(a)
    assert gw.pick("llama3.2:1b") == "a1"
    a.loaded_models = ["other:7b"]  # a client loaded another model on it
    gw.agent_changed(a)
    assert gw.can_serve("other:7b")
    sizes.note("llama3.2:1b", 100 * 10**9)  # learned now: it does not fit 80 GB
    assert not gw.can_serve("llama3.2:1b") and gw.can_serve("other:7b")
    a.draining = True
    gw.agent_changed(a)
    assert not gw.can_serve("other:7b")
