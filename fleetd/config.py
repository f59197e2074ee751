"""The one place that reads TOML, environment variables and CLI flags: defaults < file < flags.

Everything is decoded once into msgspec Structs and checked right after; any problem is a
``ConfigError`` naming the dotted key, what was expected and what was found.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from fleetd.core.errors import explain_validation
from fleetd.core.names import InvalidModelName, normalize

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_SUPPORTED_MODELS = [
    "gpt-oss:20b",
    "gpt-oss:120b",
    "gpt-oss-safeguard:20b",
    "qwen3-coder:30b",
]


class ConfigError(Exception):
    """A bad config file, flag or environment variable; the message is one line."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class MirrorConfig(_Section):
    enabled: bool = True
    max_bytes: int = 0
    upstream_bandwidth_bps: int = 0


class PlacementRule(_Section):
    """``[[coordinator.placement]]``: agents whose labels include all of ``match`` hold
    ``models`` instead of the supported list (the first matching rule wins)."""

    match: dict[str, str]
    models: list[str]


class CoordinatorConfig(_Section):
    listen: str = "0.0.0.0:8080"
    data_dir: str = "/var/lib/fleetd"
    supported_models: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_SUPPORTED_MODELS)
    )
    heartbeat_timeout_s: float = 20.0
    balancer: str = "least-busy"
    queue_limit: int = 1024
    queue_timeout_s: float = 30.0
    max_requests_per_agent: int = 0
    """0: no cap. Else requests beyond it wait in the gate, served round-robin across keys."""
    catalog: str = "ollama-library"
    library_url: str = "https://ollama.com"
    registry_url: str = "https://registry.ollama.ai"
    catalog_refresh_s: float = 3600.0
    keepalive_timeout_s: float = 20.0
    database_url: str = ""
    """Empty: SQLite in data_dir; ``postgresql://…``: PostgreSQL (``FLEETD_DATABASE_URL`` wins)."""
    mirror: MirrorConfig = msgspec.field(default_factory=MirrorConfig)
    placement: list[PlacementRule] = msgspec.field(default_factory=list)
    history_interval_s: int = 10
    """One sample of the charts' history per interval; 360 are kept (an hour at 10 s)."""
    history_max_agents: int = 1000
    usage_retention_days: float = 400.0
    """Usage rows older than this are deleted (hourly); 0 keeps them forever."""


class OllamaServer(_Section):
    url: str = "http://127.0.0.1:11434"
    models_dir: str = "~/.ollama/models"


class GpuDevice(_Section):
    name: str
    memory_bytes: int


class GpuConfig(_Section):
    probe: str = "auto"
    devices: list[GpuDevice] = msgspec.field(default_factory=list)


class AgentConfig(_Section):
    name: str = ""
    coordinator_url: str | list[str] = "http://127.0.0.1:8080"
    """One URL, or several: the agent uses the first that answers (``coordinator_urls``)."""
    listen: str = "0.0.0.0:11435"
    advertise_url: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    data_dir: str = "/var/lib/fleetd-agent"
    max_concurrent_downloads: int = 2
    download_stall_timeout_s: float = 30.0
    heartbeat_interval_s: float = 5.0
    registry_url: str = "https://registry.ollama.ai"
    disk_margin_bytes: int = 2_000_000_000
    residency_check_s: float = 0.0
    keepalive_timeout_s: float = 20.0
    ollama: list[OllamaServer] = msgspec.field(default_factory=lambda: [OllamaServer()])
    gpu: GpuConfig = msgspec.field(default_factory=GpuConfig)

    def coordinator_urls(self) -> list[str]:
        u = self.coordinator_url
        return [u] if isinstance(u, str) else list(u)


class Secrets(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens from the environment; ``None`` means "use or generate the file in data_dir"."""

    admin_token: str | None = None
    agent_token: str | None = None
    api_keys: tuple[str, ...] = ()


class Config(_Section):
    coordinator: CoordinatorConfig = msgspec.field(default_factory=CoordinatorConfig)
    agent: AgentConfig = msgspec.field(default_factory=AgentConfig)
    secrets: Secrets = msgspec.field(default_factory=Secrets)


def _dotted(msg: str) -> str:
    path, reason = explain_validation(msg)
    return f"{path}: {reason}" if path else reason


def _parse_listen(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")


def _check_url(key: str, value: str, *, allow_empty: bool = False) -> None:
    if allow_empty and value == "":
        return
    if not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {value!r}")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def check_database_url(key: str, value: str) -> None:
    if value == "":
        return
    if not re.match(r"^postgres(ql)?://", value):
        raise ConfigError(
            f"{key}: expected a postgresql:// URL (or empty for SQLite in data_dir), "
            f"got {redact_url(value)!r}"
        )
    try:
        urlsplit(value).port  # noqa: B018 - parsing is the check
    except ValueError as e:
        raise ConfigError(f"{key}: {e}, got {redact_url(value)!r}") from None


def _check_coordinator_urls(a: AgentConfig) -> None:
    if isinstance(a.coordinator_url, str):
        _check_url("agent.coordinator_url", a.coordinator_url)
        a.coordinator_url = a.coordinator_url.rstrip("/")
        return
    if not a.coordinator_url:
        raise ConfigError("agent.coordinator_url: expected a URL or a list of URLs, got []")
    for i, url in enumerate(a.coordinator_url):
        _check_url(f"agent.coordinator_url[{i}]", url)
    urls = [u.rstrip("/") for u in a.coordinator_url]
    if len(set(urls)) != len(urls):
        raise ConfigError("agent.coordinator_url: a URL is listed twice")
    a.coordinator_url = urls


def _positive(key: str, value: float, *, minimum: float = 0, strict: bool = True) -> None:
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"{key}: expected a number {op} {minimum}, got {value!r}")


def validate(cfg: Config) -> Config:
    """Cross-field and range checks that types alone cannot express."""
    c, a = cfg.coordinator, cfg.agent
    _parse_listen("coordinator.listen", c.listen)
    _parse_listen("agent.listen", a.listen)
    _positive("coordinator.heartbeat_timeout_s", c.heartbeat_timeout_s)
    _positive("coordinator.queue_timeout_s", c.queue_timeout_s)
    _positive("coordinator.catalog_refresh_s", c.catalog_refresh_s)
    if c.max_requests_per_agent < 0:
        raise ConfigError(
            "coordinator.max_requests_per_agent: expected an integer >= 0 (0: no cap), "
            f"got {c.max_requests_per_agent}"
        )
    if not 1 <= c.history_interval_s <= 60:
        raise ConfigError(
            f"coordinator.history_interval_s: expected 1 to 60 seconds, got {c.history_interval_s}"
        )
    if c.history_max_agents < 0:
        raise ConfigError(
            f"coordinator.history_max_agents: expected an integer >= 0, got {c.history_max_agents}"
        )
    _positive("coordinator.keepalive_timeout_s", c.keepalive_timeout_s)
    _positive("coordinator.usage_retention_days", c.usage_retention_days, strict=False)
    _positive("agent.keepalive_timeout_s", a.keepalive_timeout_s)
    if c.queue_limit < 0:
        raise ConfigError(f"coordinator.queue_limit: expected an integer >= 0, got {c.queue_limit}")
    for key in ("max_bytes", "upstream_bandwidth_bps"):
        if getattr(c.mirror, key) < 0:
            raise ConfigError(
                f"coordinator.mirror.{key}: expected an integer >= 0, got {getattr(c.mirror, key)}"
            )
    if not c.supported_models:
        raise ConfigError("coordinator.supported_models: expected at least one model, got []")
    normalized = []
    for i, name in enumerate(c.supported_models):
        try:
            normalized.append(normalize(name))
        except InvalidModelName:
            raise ConfigError(
                f"coordinator.supported_models[{i}]: invalid model name {name!r}"
            ) from None
    if len(set(normalized)) != len(normalized):
        raise ConfigError("coordinator.supported_models: a model is listed twice")
    c.supported_models = normalized
    for i, rule in enumerate(c.placement):
        key = f"coordinator.placement[{i}]"
        if not rule.match:
            raise ConfigError(f"{key}.match: expected at least one label, got {{}}")
        if not rule.models:
            raise ConfigError(f"{key}.models: expected at least one model, got []")
        for j, name in enumerate(rule.models):
            try:
                rule.models[j] = normalize(name)
            except InvalidModelName:
                raise ConfigError(f"{key}.models[{j}]: invalid model name {name!r}") from None
        rule.models = list(dict.fromkeys(rule.models))
    for label, value in a.labels.items():
        if not label or len(label) > 128 or len(value) > 128:
            raise ConfigError(f"agent.labels.{label}: expected 1-128 characters, got {value!r}")
    _check_url("coordinator.library_url", c.library_url)
    _check_url("coordinator.registry_url", c.registry_url)
    check_database_url("coordinator.database_url", c.database_url)
    _check_coordinator_urls(a)
    _check_url("agent.advertise_url", a.advertise_url, allow_empty=True)
    if len(a.name) > 128 or not a.name.isprintable():
        # The coordinator refuses such a name at registration (docs/api.md, Size limits).
        raise ConfigError(
            f"agent.name: expected at most 128 printable characters, got {a.name[:40]!r}…"
            if len(a.name) > 128
            else f"agent.name: control characters are not allowed, got {a.name!r}"
        )
    _check_url("agent.registry_url", a.registry_url)
    if a.max_concurrent_downloads < 1:
        raise ConfigError(
            "agent.max_concurrent_downloads: expected an integer >= 1, "
            f"got {a.max_concurrent_downloads}"
        )
    _positive("agent.heartbeat_interval_s", a.heartbeat_interval_s)
    _positive("agent.download_stall_timeout_s", a.download_stall_timeout_s)
    _positive("agent.residency_check_s", a.residency_check_s, strict=False)
    if a.disk_margin_bytes < 0:
        raise ConfigError(f"agent.disk_margin_bytes: expected >= 0, got {a.disk_margin_bytes}")
    if not a.ollama:
        raise ConfigError("agent.ollama: expected at least one [[agent.ollama]] entry")
    for i, srv in enumerate(a.ollama):
        _check_url(f"agent.ollama[{i}].url", srv.url)
        srv.url = srv.url.rstrip("/")
    for i, dev in enumerate(a.gpu.devices):
        if dev.memory_bytes <= 0:
            raise ConfigError(
                f"agent.gpu.devices[{i}].memory_bytes: expected > 0, got {dev.memory_bytes}"
            )
    a.advertise_url = a.advertise_url.rstrip("/")
    for url_owner, attr in ((c, "library_url"), (c, "registry_url"), (a, "registry_url")):
        setattr(url_owner, attr, getattr(url_owner, attr).rstrip("/"))
    return cfg


def _secrets_from_env(env: dict[str, str]) -> Secrets:
    keys = tuple(k.strip() for k in env.get("FLEETD_API_KEYS", "").split(",") if k.strip())
    return Secrets(
        admin_token=env.get("FLEETD_ADMIN_TOKEN") or None,
        agent_token=env.get("FLEETD_AGENT_TOKEN") or None,
        api_keys=keys,
    )


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    ollama_urls: list[str] | None = None,
) -> Config:
    """Read the TOML file (if any), apply flag overrides given as dotted keys, validate.

    ``ollama_urls`` (``--ollama``, repeatable) replaces the URLs of ``[[agent.ollama]]``,
    keeping each entry's ``models_dir`` from the file where one stands at the same position.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r}: no such file") from None
        except OSError as e:
            raise ConfigError(f"config file {str(p)!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r}: invalid TOML: {e}") from None
        if "secrets" in raw:
            raise ConfigError(
                "secrets: unknown key (tokens come from FLEETD_* environment variables)"
            )
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{part}: expected a table, got {type(child).__name__}")
            node = child
        node[leaf] = value
    if ollama_urls:
        agent = raw.setdefault("agent", {})
        old = agent.get("ollama", [])
        old = old if isinstance(old, list) else []
        agent["ollama"] = [
            {**(old[i] if i < len(old) and isinstance(old[i], dict) else {}), "url": url}
            for i, url in enumerate(ollama_urls)
        ]
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(_dotted(str(e))) from None
    env = dict(os.environ) if env is None else env
    cfg.secrets = _secrets_from_env(env)
    if env.get("FLEETD_DATABASE_URL"):
        cfg.coordinator.database_url = env["FLEETD_DATABASE_URL"]
    return validate(cfg)


def expand(path: str) -> Path:
    """A configured path with ``~`` expanded."""
    return Path(path).expanduser()
