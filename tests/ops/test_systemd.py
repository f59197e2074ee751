"""The systemd units are valid and keep the properties the install docs promise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
COORDINATOR = UNITS / "fleetd-coordinator.service"
AGENT = UNITS / "fleetd-agent.service"


def service(unit: Path) -> dict[str, str]:
    """The [Service] section; a key given several times (Environment=) joins with spaces."""
    values: dict[str, str] = {}
    section = ""
    for line in unit.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = f"{values[key]} {value}" if key in values else value
    return values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_units_pass_systemd_analyze_verify() -> None:
    """Exit 0 is not enough: unknown keys and bad values are only warnings."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(COORDINATOR), str(AGENT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "fleetd-coordinator.service" in line or "fleetd-agent.service" in line
    ]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("unit", "role", "state"),
    [(COORDINATOR, "coordinator", "fleetd"), (AGENT, "agent", "fleetd-agent")],
)
def test_unit_runs_the_pex_as_a_dedicated_user(unit: Path, role: str, state: str) -> None:
    s = service(unit)
    assert s["User"] == "fleetd"
    assert s["StateDirectory"] == state
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert "TimeoutStopSec" in s
    assert s["EnvironmentFile"] == "/etc/fleetd/fleetd.env"
    assert s["ExecStart"] == (
        f"/usr/bin/python3 /opt/fleetd/fleetd.pex --role {role} --config /etc/fleetd/{role}.toml"
    )
    # The pex unpacks itself into PEX_ROOT: it must be a directory the service may write.
    assert f"PEX_ROOT=/var/cache/{state}/pex" in s["Environment"]
    assert s["CacheDirectory"] == state


def test_agent_unit_keeps_nvidia_devices_reachable() -> None:
    s = service(AGENT)
    assert s.get("PrivateDevices", "no") == "no"
    assert "DevicePolicy" not in s and "DeviceAllow" not in s
    assert "MemoryDenyWriteExecute" not in s
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"


def test_env_example_names_every_secret() -> None:
    text = (UNITS / "fleetd.env.example").read_text(encoding="utf-8")
    for var in ("FLEETD_ADMIN_TOKEN", "FLEETD_AGENT_TOKEN", "FLEETD_API_KEYS"):
        assert f"\n{var}=" in text
