"""The wire format between agents, the coordinator and API clients, as msgspec Structs.

Decoding is strict on types; unknown fields are ignored so older and newer peers keep working.
Timestamps are UTC datetimes (ISO 8601 on the wire).
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from typing import Annotated, Literal

import msgspec

from fleetd.core.gpu import Gpu

Count = Annotated[int, msgspec.Meta(ge=0)]

TaskStatus = Literal["queued", "downloading", "completed", "failed", "waiting", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

AGENT_PREFIX = "/fleetd"
"""Where the agent's own API lives on its single port (never collides with /api or /v1)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_revisions = itertools.count(time.time_ns() // 1000)


def next_revision() -> int:
    """The ``revision`` for an agent or task that just changed.

    Copies of one object reach a client by several ways (REST replies, SSE messages) and out
    of order; the higher revision is the newer copy. One counter for all objects, started from
    the clock in microseconds, so revisions keep growing across a coordinator restart (a
    restart reloads objects whose last changes may not have been written) while staying
    exact as JavaScript numbers.
    """
    return next(_revisions)


class InstalledModel(msgspec.Struct, kw_only=True):
    """One model in an Ollama's ``/api/tags``, as the agent reports it."""

    name: str
    size: int
    installed_at: datetime | None = None
    digest: str = ""


class Registration(msgspec.Struct, kw_only=True):
    """``POST /api/agents``; only name, url and gpus are required."""

    name: str
    url: str
    gpus: list[Gpu]
    instance_id: str = ""
    version: str = ""
    ollama_versions: list[str] = msgspec.field(default_factory=list)
    models: list[InstalledModel] | None = None
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """How often the agent sends heartbeats; ``DEFAULT_HEARTBEAT_INTERVAL_S`` if absent."""


class Heartbeat(msgspec.Struct, kw_only=True):
    """``POST /api/agents/{id}/heartbeat``."""

    initializing: bool
    ready_models: Count
    total_models: Count
    requests_in_flight: Count = 0
    gpus: list[Gpu] | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    status_message: str = ""
    loaded_models: list[str] | None = None
    models: list[InstalledModel] | None = None


class Agent(msgspec.Struct, kw_only=True):
    """The coordinator's view of an agent, exactly as ``GET /api/agents/{id}`` returns it."""

    id: str
    name: str
    url: str
    status: Literal["online", "offline"] = "online"
    initializing: bool = True
    ready_models: int = 0
    total_models: int = 0
    gpus: list[Gpu] = msgspec.field(default_factory=list)
    last_seen: datetime = msgspec.field(default_factory=utcnow)
    registered_at: datetime = msgspec.field(default_factory=utcnow)
    instance_id: str = ""
    version: str = ""
    ollama_versions: list[str] = msgspec.field(default_factory=list)
    requests_in_flight: int = 0
    cpu_percent: float | None = None
    memory_percent: float | None = None
    status_message: str = ""
    loaded_models: list[str] = msgspec.field(default_factory=list)
    heartbeat_interval_s: float = 5.0
    """As the agent reported it at registration: missing two makes it suspect."""
    revision: int = 0
    """Grows with every change (see ``next_revision``); ``version`` is fleetd's own."""


class RegistrationReply(msgspec.Struct):
    """What an agent reads from the coordinator's reply to a registration or heartbeat: the
    agent object itself (``id`` included) with the ``supported_models`` it must hold, and
    whether its Ollama pulls through the coordinator's registry ``mirror``."""

    id: str
    supported_models: list[str]
    mirror: bool = False


class Task(msgspec.Struct, kw_only=True):
    """A download task, exactly as ``GET /api/tasks/{id}`` returns it."""

    id: str
    agent_id: str
    model: str
    status: TaskStatus = "queued"
    progress: float = 0.0
    completed_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    created_at: datetime = msgspec.field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    source: str = ""
    """Where the agent's Ollama pulls from: the coordinator's mirror, or the registry directly
    (and why)."""
    redownload: bool = False
    agent_name: str = ""
    attempt: int = 0
    """Bumped by ``POST /api/tasks/{id}/retry``; the agent runs a task id again only for a
    higher attempt, so updates from an earlier attempt can be told apart and dropped."""
    revision: int = 0
    """Grows with every change (see ``next_revision``)."""


class Order(msgspec.Struct, kw_only=True):
    """Coordinator → agent: ``POST {agent}/fleetd/tasks``. Idempotent by ``task_id`` and
    ``attempt``; the agent answers with the task's ``TaskUpdate`` as it stands."""

    task_id: str
    model: str
    redownload: bool = False
    attempt: int = 0


class TaskUpdate(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Agent → coordinator: the state of one of its tasks."""

    task_id: str
    status: TaskStatus
    attempt: int = 0
    completed_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    source: str = ""


class ProgressReport(msgspec.Struct, kw_only=True):
    """Agent → coordinator: ``POST /api/agents/{id}/progress``, at least once a second while
    a download runs; ``models`` (the installed list) only when it changed."""

    tasks: list[TaskUpdate]
    models: list[InstalledModel] | None = None


class ProgressReply(msgspec.Struct, kw_only=True):
    """The coordinator's answer to a progress report: task ids the agent must stop (cancelled
    while the agent was unreachable, or unknown to the coordinator)."""

    cancel: list[str] = msgspec.field(default_factory=list)


class ModelList(msgspec.Struct, kw_only=True):
    """``GET {agent}/fleetd/models``: what the agent's Ollama server(s) have installed."""

    models: list[InstalledModel]
