"""Plugin discovery: built-ins come through entry points; unknown names fail naming the choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.core.errors import StartupError
from fleetd.core.plugins import GROUPS, available, load_plugin
from tests.conftest import Fleet

TESTS = Path(__file__).parent


def test_builtins_are_registered_as_entry_points() -> None:
    assert set(available("fleetd.gpu")) >= {"auto", "nvml", "static", "none"}
    assert set(available("fleetd.balancer")) >= {"least-busy", "round-robin"}
    assert set(available("fleetd.catalog")) >= {"ollama-library"}


def test_unknown_plugin_names_key_group_and_choices() -> None:
    with pytest.raises(StartupError) as e:
        load_plugin("fleetd.gpu", "nvml2", "agent.gpu.probe")
    assert str(e.value) == (
        "agent.gpu.probe = 'nvml2': no plugin of that name in fleetd.gpu "
        "(installed: auto, none, nvml, static)"
    )


def test_unknown_probe_fails_agent_start_with_one_line(fleet: Fleet) -> None:
    a = fleet.agent("http://127.0.0.1:9", gpu={"probe": "nvml2"}, wait=False)
    assert a.wait_exit(20) == 1
    assert "no plugin of that name in fleetd.gpu" in a.log
    assert "Traceback" not in a.log


@pytest.mark.parametrize("group", GROUPS)
def test_every_entry_point_group_has_tests(group: str) -> None:
    """Meta-test: each plugin kind has a test module under tests/plugins/."""
    kind = group.split(".")[1]
    assert (TESTS / "plugins" / f"test_{kind}.py").exists(), f"no tests/plugins/test_{kind}.py"
