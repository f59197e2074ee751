"""Config: defaults < file < flags, and one clear line naming the key for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetd import config
from fleetd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "fleetd.toml"
    p.write_text(body)
    return p


def test_example_config_loads_with_the_documented_defaults() -> None:
    cfg = config.load(ROOT / "config.example.toml", env={})
    assert cfg == config.load(None, env={})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "[agent]\nmax_concurrent_downloads = 0",
            "agent.max_concurrent_downloads: expected an integer >= 1, got 0",
        ),
        ("[agent]\nmax_downloads = 2", "agent.max_downloads: unknown key"),
        ("[agent.gpu]\nprobe = 3", "agent.gpu.probe: expected str, got int"),
        (
            "[[agent.gpu.devices]]\nname = 'x'",
            "agent.gpu.devices[0].memory_bytes: required key is missing",
        ),
        (
            '[coordinator]\nsupported_models = ["bad name"]',
            "coordinator.supported_models[0]: invalid model name 'bad name'",
        ),
        ('[coordinator]\nlisten = "8080"', "coordinator.listen: expected HOST:PORT, got '8080'"),
        (
            '[coordinator]\nregistry_url = "ftp://x"',
            "coordinator.registry_url: expected an http:// or https:// URL",
        ),
        (
            "[coordinator]\nheartbeat_timeout_s = -1",
            "coordinator.heartbeat_timeout_s: expected a number > 0",
        ),
        (
            "[coordinator]\nmax_requests_per_agent = -2",
            "coordinator.max_requests_per_agent: expected an integer >= 0",
        ),
        (
            "[coordinator]\nhistory_interval_s = 0",
            "coordinator.history_interval_s: expected 1 to 60 seconds, got 0",
        ),
        ("[coordinator]\nhistory_interval_s = 2.5", "coordinator.history_interval_s: expected"),
        (
            "[coordinator]\nhistory_max_agents = -1",
            "coordinator.history_max_agents: expected an integer >= 0, got -1",
        ),
        (
            '[coordinator]\ndatabase_url = "mysql://u:hunter2@db/fleet"',
            "coordinator.database_url: expected a postgresql:// URL (or empty for SQLite in "
            "data_dir), got 'mysql://u:***@db/fleet'",
        ),
        (
            '[coordinator]\ndatabase_url = "postgresql://u:hunter2@db:port/fleet"',
            "coordinator.database_url: Port could not be cast to integer value",
        ),
        ("[agent]\nollama = []", "agent.ollama: expected at least one [[agent.ollama]] entry"),
        ('[agent]\nname = "gpu\\nforged"', "agent.name: control characters are not allowed"),
        (f'[agent]\nname = "{"n" * 129}"', "agent.name: expected at most 128 printable"),
        (
            "[agent]\ndownload_stall_timeout_s = 0",
            "agent.download_stall_timeout_s: expected a number > 0",
        ),
        ("[nonsense]\nx = 1", "nonsense: unknown key"),
        ("[agent\n", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, body), env={})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agent]\nlisten = "0.0.0.0:1"\n[[agent.ollama]]\nurl = "http://a:1"\nmodels_dir = "/m"',
    )
    cfg = config.load(
        path, {"agent.listen": "127.0.0.1:2"}, env={}, ollama_urls=["http://b:2", "http://c:3"]
    )
    assert cfg.agent.listen == "127.0.0.1:2"
    assert [(o.url, o.models_dir) for o in cfg.agent.ollama] == [
        ("http://b:2", "/m"),
        ("http://c:3", "~/.ollama/models"),
    ]


def test_secrets_come_from_the_environment() -> None:
    cfg = config.load(None, env={"FLEETD_ADMIN_TOKEN": "a", "FLEETD_API_KEYS": " k1, ,k2 "})
    assert cfg.secrets.admin_token == "a"
    assert cfg.secrets.agent_token is None
    assert cfg.secrets.api_keys == ("k1", "k2")


def test_database_url_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert config.load(None, env={}).coordinator.database_url == ""
    path = write(tmp_path, '[coordinator]\ndatabase_url = "postgres://fleetd@db/fleet"')
    assert config.load(path, env={}).coordinator.database_url == "postgres://fleetd@db/fleet"
    env = {"FLEETD_DATABASE_URL": "postgresql://fleetd:pw@other/fleet"}
    assert config.load(path, env=env).coordinator.database_url == env["FLEETD_DATABASE_URL"]
    with pytest.raises(config.ConfigError, match=r"coordinator\.database_url: "):
        config.load(None, env={"FLEETD_DATABASE_URL": "sqlite:///x.db"})


def test_redact_url_hides_only_the_password() -> None:
    assert config.redact_url("postgresql://u:p%40ss@h:5/d?x=1") == "postgresql://u:***@h:5/d?x=1"
    assert config.redact_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_supported_models_are_normalized() -> None:
    cfg = config.load(None, {"coordinator.supported_models": ["llama3", "library/qwen:7b"]}, env={})
    assert cfg.coordinator.supported_models == ["llama3:latest", "qwen:7b"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "agent", "--listen", "nope"], "agent.listen: expected HOST:PORT, got 'nope'"),
        (["--role", "boss"], "Invalid value for '--role'"),
        (["--role", "coordinator", "--ollama", "http://x"], "--ollama is an agent flag"),
        (["--role", "agent", "--config", "/does/not/exist.toml"], "no such file"),
        (
            ["--role", "agent", "--coordinator", "not-a-url"],
            "agent.coordinator_url: expected an http",
        ),
        (
            ["--role", "agent", "--coordinator", "http://a:8080,nope"],
            "agent.coordinator_url[1]: expected an http",
        ),
        (
            [
                "--role",
                "agent",
                "--coordinator",
                "http://a:8080",
                "--coordinator",
                "http://a:8080/",
            ],
            "agent.coordinator_url: a URL is listed twice",
        ),
    ],
)
def test_bad_flags_exit_nonzero_with_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_version_and_help() -> None:
    runner = CliRunner()
    from fleetd import __version__

    assert __version__ in runner.invoke(main, ["--version"]).output
    out = runner.invoke(main, ["--help"]).output
    for flag in ("--role", "--config", "--listen", "--data-dir", "--coordinator", "--ollama"):
        assert flag in out
    assert "sim-ollama" in out


def test_coordinator_url_is_one_url_or_a_list() -> None:
    one = config.load(None, {"agent.coordinator_url": "http://a:8080/"}, env={})
    assert one.agent.coordinator_urls() == ["http://a:8080"]
    both = config.load(None, {"agent.coordinator_url": ["http://a:8080", "http://b:8080/"]}, env={})
    assert both.agent.coordinator_urls() == ["http://a:8080", "http://b:8080"]
    with pytest.raises(config.ConfigError, match=r"^agent.coordinator_url: expected a URL or a"):
        config.load(None, {"agent.coordinator_url": []}, env={})
