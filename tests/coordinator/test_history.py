"""The charts' history in memory: rings bounded by SAMPLES and by history_max_agents, counts
landing in the interval they were made in, gaps where no sample was taken, agents dropped."""

from __future__ import annotations

from fleetd.coordinator.history import AGENT, FLEET, SAMPLES, History
from fleetd.core.gpu import Gpu
from fleetd.core.wire import Agent, Task

GiB = 1 << 30


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def agent(agent_id: str, used: int | None = None, util: float | None = None) -> Agent:
    gpu = Gpu(name="H100", memory_bytes=80 * GiB, memory_used_bytes=used, utilization=util)
    return Agent(id=agent_id, name=agent_id, url=f"http://{agent_id}", gpus=[gpu])


def test_counts_and_figures_land_in_the_interval_that_just_ended() -> None:
    clock = Clock(1_000_000.0)
    h = History(10, 100, clock)
    a, b = agent("a", 40 * GiB, 0.5), agent("b", 20 * GiB, 0.25)
    for _ in range(3):
        h.request_ended("a", 10, 20, False)
    h.request_ended("b", 5, 7, False)
    h.request_ended("", 0, 0, True)  # refused before any agent
    h.task_changed(Task(id="t1", agent_id="b", model="m", status="downloading", speed_bps=1e6))
    h.task_changed(Task(id="t2", agent_id="b", model="n", status="downloading", speed_bps=5e5))
    h.task_changed(Task(id="t3", agent_id="a", model="n", status="completed", speed_bps=9e9))
    assert h.until_next() == 10.0
    clock.t += 10.002  # woken just after the boundary
    sample = h.sample([a, b])
    assert sample is not None
    assert sample.t == 1_000_000 and sample.interval_s == 10
    assert sample.fleet == {
        "requests": 5,
        "errors": 1,
        "prompt_tokens": 35,
        "completion_tokens": 67,
        "gpu_memory_used_bytes": 60 * GiB,
        "gpu_memory_bytes": 160 * GiB,
        "gpu_utilization": 0.375,
        "download_bps": 1_500_000,
    }
    fleet = h.read()
    assert fleet["start"] == 1_000_000 - (SAMPLES - 1) * 10
    assert fleet["interval_s"] == 10 and fleet["window_s"] == 3600
    assert set(fleet["series"]) == set(FLEET)
    assert all(len(v) == SAMPLES for v in fleet["series"].values())
    assert fleet["series"]["requests"][-1] == 5
    assert fleet["series"]["requests"][:-1] == [None] * (SAMPLES - 1)
    assert h.read("a", since=999_999)["series"] == {
        "requests": [3],
        "prompt_tokens": [30],
        "completion_tokens": [60],
        "gpu_memory_used_bytes": [40 * GiB],
        "gpu_utilization": [0.5],
        "download_bps": [0],
    }
    b_now = h.read("b", since=999_999)
    assert b_now["start"] == 1_000_000
    assert b_now["series"]["requests"] == [1]
    assert b_now["series"]["download_bps"] == [1_500_000]

    # The next interval: nothing counted is zero (not a gap); a finished download stops.
    h.task_changed(Task(id="t1", agent_id="b", model="m", status="completed"))
    clock.t += 10
    sample = h.sample([a, b])
    assert sample is not None and sample.t == 1_000_010
    assert sample.fleet["requests"] == 0 and sample.fleet["download_bps"] == 500_000
    assert h.read(since=1_000_000)["series"]["requests"] == [0]
    assert h.read("b", since=1_000_000)["series"]["download_bps"] == [500_000]


def test_a_missed_sample_is_a_gap_and_the_ring_stays_bounded() -> None:
    clock = Clock(0.0)
    h = History(1, 10, clock)
    a = agent("a", 1 * GiB, 0.1)
    for i in range(1, 2 * SAMPLES + 1):
        clock.t = float(i)
        h.request_ended("a", 0, i, False)
        if i == 2 * SAMPLES - 5:
            continue  # the loop stalled: no sample for this interval
        assert h.sample([a]) is not None
    # A second sample in the same interval (the clock went back) is refused.
    assert h.sample([a]) is None
    fleet = h.read()
    assert fleet["start"] == SAMPLES  # the window: the last SAMPLES intervals
    completion = fleet["series"]["completion_tokens"]
    assert len(completion) == SAMPLES
    gap = completion.index(None)
    assert gap == SAMPLES - 6
    # The interval after the gap got both intervals' counts: nothing counted is lost.
    assert completion[gap + 1] == (2 * SAMPLES - 5) + (2 * SAMPLES - 4)
    assert completion[0] == SAMPLES + 1 and completion[-1] == 2 * SAMPLES
    assert sum(1 for v in completion if v is None) == 1
    assert len(h.read("a")["series"]["completion_tokens"]) == SAMPLES


def test_per_agent_series_are_capped_and_freed() -> None:
    clock = Clock(100.0)
    h = History(1, 2, clock)
    agents = [agent("a"), agent("b"), agent("c")]
    clock.t += 1
    h.sample(agents)
    assert h.tracked("a") and h.tracked("b") and not h.tracked("c")
    assert h.read("c", since=99)["series"]["requests"] == [None]
    assert h.read("a", since=99)["series"]["requests"] == [0]
    # Static GPUs report no figures: a gap, not a zero.
    assert h.read("a", since=99)["series"]["gpu_memory_used_bytes"] == [None]
    assert h.read(since=99)["series"]["gpu_utilization"] == [None]

    # "a" removed from the registry: its slot goes to "c" at the next sample.
    clock.t += 1
    h.sample(agents[1:])
    assert h.read("a", since=99)["series"]["requests"] == [None, None]
    assert h.read("c", since=99)["series"]["requests"] == [None, 0]

    # "b" offline: gaps, except for replies that ended meanwhile; dropped a window later.
    agents[1].status = "offline"
    h.request_ended("b", 1, 2, False)
    clock.t += 1
    h.sample(agents[1:])
    assert h.read("b", since=101)["series"]["requests"] == [1]
    assert h.read("b", since=101)["series"]["gpu_utilization"] == [None]
    for _ in range(SAMPLES):
        clock.t += 1
        h.sample(agents[1:])
    assert h.tracked("b")  # a free slot again, but no ring held
    assert "b" not in h._agents
    assert set(h.read("c")["series"]) == set(AGENT)


def test_before_the_first_sample_the_series_are_empty() -> None:
    h = History(10, 10, Clock(1234.0))
    body = h.read()
    assert body["start"] == 1230 and all(v == [] for v in body["series"].values())
