"""The wire format between agents, the coordinator and API clients, as msgspec Structs.

Decoding is strict on types; unknown fields are ignored so older and newer peers keep working.
Timestamps are UTC datetimes (ISO 8601 on the wire).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Literal

import msgspec

from fleetd.core.gpu import Gpu

INT_MAX = 2**63 - 1
"""SQLite's largest INTEGER: every number an agent or client sends must fit in it."""

Count = Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)]
Bytes = Count
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]
"""Finite (``1e400`` decodes to infinity) and within ~30,000 years."""
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1e15)]
Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]

# Sizes: an agent or client cannot make the coordinator hold (and fan out to every dashboard)
# more than a few KiB per agent. Generous enough that no real host reaches them.
NAME_MAX = 128
URL_MAX = 2048
MESSAGE_MAX = 1024
"""``status_message``; the agent clips its own message to it."""
ERROR_MAX = 4096
"""A task's ``error``; the agent clips it."""
MODEL_NAME_MAX = 512
LIST_MAX = 4096
"""Installed models, task updates in one report."""
LOADED_MAX = 256
"""Models loaded at once on one host (each takes GPU memory: a few dozen at most)."""
Str = Annotated[str, msgspec.Meta(max_length=NAME_MAX)]
ModelName = Annotated[str, msgspec.Meta(max_length=MODEL_NAME_MAX)]
ModelNames = Annotated[list[ModelName], msgspec.Meta(max_length=LOADED_MAX)]
Url = Annotated[str, msgspec.Meta(max_length=URL_MAX)]
Message = Annotated[str, msgspec.Meta(max_length=MESSAGE_MAX)]
ErrorText = Annotated[str, msgspec.Meta(max_length=ERROR_MAX)]


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked as cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


TaskStatus = Literal["queued", "downloading", "completed", "failed", "waiting", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

AGENT_PREFIX = "/fleetd"
"""Where the agent's own API lives on its single port (never collides with /api or /v1)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_last_revision = 0


def next_revision() -> int:
    """The ``revision`` for an agent or task that just changed.

    Copies of one object reach a client by several ways (REST replies, SSE messages, other
    coordinators sharing the database) and out of order; the higher revision is the newer
    copy. The wall clock in microseconds, or one more than the last revision made or
    ``observe``d here when that is higher: revisions keep growing across a coordinator
    restart, and a change made after reading another coordinator's copy outranks it (a
    Lamport clock), while staying exact as JavaScript numbers.
    """
    global _last_revision
    _last_revision = max(_last_revision + 1, time.time_ns() // 1000)
    return _last_revision


def observe_revision(revision: int) -> None:
    """A copy with ``revision`` came from another coordinator: later changes here outrank it."""
    global _last_revision
    if revision > _last_revision:
        _last_revision = revision


class InstalledModel(msgspec.Struct, kw_only=True):
    """One model in an Ollama's ``/api/tags``, as the agent reports it."""

    name: ModelName
    size: Bytes
    installed_at: datetime | None = None
    digest: Str = ""


InstalledModels = Annotated[list[InstalledModel], msgspec.Meta(max_length=LIST_MAX)]
Gpus = Annotated[list[Gpu], msgspec.Meta(max_length=64)]


class Registration(msgspec.Struct, kw_only=True):
    """``POST /api/agents``; only name, url and gpus are required."""

    name: Str
    url: Url
    gpus: Gpus
    instance_id: Str = ""
    version: Str = ""
    ollama_versions: Annotated[list[Str], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    models: InstalledModels | None = None
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0, le=1e6)] | None = None
    """How often the agent sends heartbeats; ``DEFAULT_HEARTBEAT_INTERVAL_S`` if absent."""


class Heartbeat(msgspec.Struct, kw_only=True):
    """``POST /api/agents/{id}/heartbeat``."""

    initializing: bool
    ready_models: Count
    total_models: Count
    requests_in_flight: Count = 0
    gpus: Gpus | None = None
    cpu_percent: Percent | None = None
    memory_percent: Percent | None = None
    status_message: Message = ""
    loaded_models: ModelNames | None = None


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
    attempt: Count = 0


class TaskUpdate(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Agent → coordinator: the state of one of its tasks."""

    task_id: Str
    status: TaskStatus
    attempt: Count = 0
    completed_bytes: Bytes = 0
    total_bytes: Bytes = 0
    speed_bps: Rate = 0.0
    eta_s: Seconds | None = None
    error: ErrorText | None = None
    source: Message = ""


class ProgressReport(msgspec.Struct, kw_only=True):
    """Agent → coordinator: ``POST /api/agents/{id}/progress``, at least once a second while
    a download runs; ``models`` (the installed list) only when it changed."""

    tasks: Annotated[list[TaskUpdate], msgspec.Meta(max_length=LIST_MAX)]
    models: InstalledModels | None = None


class ProgressReply(msgspec.Struct, kw_only=True):
    """The coordinator's answer to a progress report: task ids the agent must stop (cancelled
    while the agent was unreachable, or unknown to the coordinator)."""

    cancel: list[str] = msgspec.field(default_factory=list)


class ModelList(msgspec.Struct, kw_only=True):
    """``GET {agent}/fleetd/models``: what the agent's Ollama server(s) have installed."""

    models: InstalledModels
