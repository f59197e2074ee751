"""The short forms in ``fleetd ctl``'s tables, as an operator reads them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fleetd.ctl import tables

GIB = 2**30


@pytest.mark.parametrize(
    ("devices", "shown"),
    [
        ([{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_520_809_984}] * 2, "2×H100 80G"),
        ([{"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 80 * GIB}], "1×A100-SXM4 80G"),
        (
            [
                {"name": "NVIDIA GeForce RTX 4090", "memory_bytes": 24 * GIB},
                {"name": "NVIDIA L4", "memory_bytes": 23 * GIB},
            ],
            "1×RTX 4090 24G, 1×L4 23G",
        ),
        ([], "-"),
    ],
)
def test_gpus_are_counted_and_named_short(devices: list[dict[str, object]], shown: str) -> None:
    assert tables.gpus(devices) == shown


def test_last_seen_and_durations() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert tables.ago("2026-01-01T11:59:57Z", now) == "3s ago"
    assert tables.ago("2026-01-01T11:50:00.5+00:00", now) == "9m ago"
    assert tables.ago("2025-12-30T12:00:00Z", now) == "2d ago"
    assert tables.ago(None, now) == "-"
    assert [tables.duration(s) for s in (0, 59.4, 102.6, 7260, None)] == [
        "0s",
        "59s",
        "1m43s",
        "2h01m",
        "-",
    ]


def test_load_is_requests_and_mean_gpu_utilization() -> None:
    agent = {"requests_in_flight": 3, "gpus": [{"utilization": 0.5}, {"utilization": 0.3}]}
    assert tables.load(agent) == "3 req, 40%"
    assert tables.load({"gpus": [{"name": "x"}]}) == "0 req"


def test_table_aligns_columns() -> None:
    text = tables.table(["NAME", "READY"], [["gpu-0", "4/4"], ["a", "10/12"]], right=[1])
    assert text.splitlines() == ["NAME   READY", "gpu-0    4/4", "a      10/12"]
