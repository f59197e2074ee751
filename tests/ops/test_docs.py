"""The operator docs and config.example.toml cover every config key and every HTTP route."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from fleetd import config
from fleetd.core.balancing import Load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"
DOCS = ROOT / "docs"


def _struct_of(annotation: object) -> type[msgspec.Struct] | None:
    """The Struct type inside ``X``, ``list[X]`` or ``X | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    for arg in typing.get_args(annotation):
        found = _struct_of(arg)
        if found is not None:
            return found
    return None


def config_keys(struct: type[msgspec.Struct], prefix: str) -> list[str]:
    """Dotted keys of every leaf in ``struct``; tables and arrays of tables are walked."""
    hints = typing.get_type_hints(struct)
    keys: list[str] = []
    for field in msgspec.structs.fields(struct):
        dotted = f"{prefix}.{field.encode_name}"
        inner = _struct_of(hints[field.name])
        keys.extend(config_keys(inner, dotted) if inner is not None else [dotted])
    return keys


ALL_KEYS = config_keys(config.CoordinatorConfig, "coordinator") + config_keys(
    config.AgentConfig, "agent"
)

_HEADER = re.compile(r"^\s*#?\s*\[\[?\s*([\w.]+)\s*\]\]?")
_ASSIGN = re.compile(r"^\s*#?\s*([A-Za-z_][\w-]*)\s*=")


def example_keys(text: str) -> set[str]:
    """Keys set in the example, commented-out ones included (``# name = …`` under
    ``# [[agent.gpu.devices]]`` documents a table that is empty by default)."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if m := _HEADER.match(line):
            section = m.group(1)
        elif (m := _ASSIGN.match(line)) and section:
            keys.add(f"{section}.{m.group(1)}")
    return keys


def test_the_walk_finds_nested_tables() -> None:
    assert "coordinator.supported_models" in ALL_KEYS
    assert "agent.ollama.models_dir" in ALL_KEYS
    assert "agent.gpu.devices.memory_bytes" in ALL_KEYS
    assert "agent.gpu" not in ALL_KEYS


def test_every_config_key_is_in_config_example_toml() -> None:
    documented = example_keys(EXAMPLE.read_text(encoding="utf-8"))
    missing = [k for k in ALL_KEYS if k not in documented]
    assert not missing, f"config.example.toml lacks {missing}"


def test_config_example_toml_loads_as_is() -> None:
    cfg = config.load(EXAMPLE, env={})
    assert cfg.coordinator == config.CoordinatorConfig()


def test_every_config_key_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [k for k in ALL_KEYS if f"`{k}`" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_every_secret_variable_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for var in ("FLEETD_ADMIN_TOKEN", "FLEETD_AGENT_TOKEN", "FLEETD_API_KEYS"):
        assert var in text


def _route_paths(app_module: str) -> set[str]:
    """Every path the role's route tables declare (parameters spelt as in docs/api.md)."""
    import importlib

    paths: set[str] = set()
    for name in (
        "agents_api",
        "catalog_api",
        "dashboard",
        "events_api",
        "fleet_api",
        "inference_api",
        "model_delete",
        "tasks_api",
        "status_api",
        "orders_api",
    ):
        try:
            module = importlib.import_module(f"fleetd.{app_module}.{name}")
        except ModuleNotFoundError:
            continue
        for route in module.routes:
            path = getattr(route, "path", "")
            paths.add(re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path))
    app_py = (ROOT / "fleetd" / app_module / "app.py").read_text(encoding="utf-8")
    paths.update(re.findall(r"router\.add_\w+\(\s*\"(/[^\"]*)\"", app_py))
    return paths


@pytest.mark.parametrize("role", ["coordinator", "agent"])
def test_every_route_is_in_the_api_docs(role: str) -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    paths = _route_paths(role)
    assert "/healthz" in paths
    if role == "coordinator":
        assert "/metrics" in paths
    missing = sorted(p for p in paths if f"{p}`" not in text and f"{p} " not in text)
    assert not missing, f"docs/api.md lacks {role} routes {missing}"


def test_plugin_docs_example_balancer_works() -> None:
    """The third-party balancer in docs/plugins.md is real code that keeps the contract."""
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    source = next(b for b in blocks if "class RandomBalancer" in b)
    namespace: dict[str, object] = {}
    exec(compile(source, "docs/plugins.md", "exec"), namespace)
    pool = namespace["RandomBalancer"]()  # type: ignore[operator]
    assert pool.pick() is None
    for agent in ("a", "b", "c"):
        pool.update(agent, Load())
    pool.update("a", Load(in_flight=3))
    pool.discard("b")
    pool.discard("unknown")
    pool.started("a")
    pool.finished("a")
    assert len(pool) == 2
    assert {pool.pick() for _ in range(200)} == {"a", "c"}
    for agent in ("a", "c"):
        pool.discard(agent)
    assert len(pool) == 0 and pool.pick() is None
