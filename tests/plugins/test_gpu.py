"""GPU probes, loaded through their entry points (which proves the pyproject lines)."""

from __future__ import annotations

import pytest

from fleetd.config import AgentConfig, GpuConfig, GpuDevice
from fleetd.core.plugins import load_plugin

H100 = GpuDevice(name="NVIDIA H100 80GB HBM3", memory_bytes=85_899_345_920)


def probe(name: str, devices: list[GpuDevice] | None = None) -> object:
    cls = load_plugin("fleetd.gpu", name, "agent.gpu.probe")
    return cls(AgentConfig(gpu=GpuConfig(probe=name, devices=devices or [])))


async def test_static_reports_the_configured_devices() -> None:
    gpus = await probe("static", [H100, H100]).probe()  # type: ignore[attr-defined]
    assert [(g.name, g.memory_bytes) for g in gpus] == [(H100.name, H100.memory_bytes)] * 2


async def test_none_reports_no_gpu() -> None:
    assert await probe("none", [H100]).probe() == []  # type: ignore[attr-defined]


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


without_driver = pytest.mark.skipif(_nvml_works(), reason="this machine has a working driver")


@without_driver
async def test_nvml_without_a_driver_is_no_gpu_not_a_crash() -> None:
    assert await probe("nvml").probe() == []  # type: ignore[attr-defined]


@without_driver
async def test_auto_falls_back_to_static_devices_without_nvml() -> None:
    p = probe("auto", [H100])
    assert [g.name for g in await p.probe()] == [H100.name]  # type: ignore[attr-defined]
    assert await probe("auto").probe() == []  # type: ignore[attr-defined]
