"""The agent's shared state: identity, what the coordinator asked of it, and how ready it is."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path

from aiohttp import web

from fleetd.config import AgentConfig
from fleetd.core.tokens import private_dir

log = logging.getLogger("fleetd.agent")


class Readiness:
    """Filled by the residency keeper; read by heartbeats and ``/v1/models``."""

    def __init__(self) -> None:
        self.downloaded: set[str] = set()
        self.loaded: set[str] = set()
        self.message = ""

    def ready(self, supported: list[str]) -> int:
        return sum(1 for m in supported if m in self.downloaded and m in self.loaded)


class Runtime:
    def __init__(self, config: AgentConfig, agent_token: str, data_dir: Path) -> None:
        self.config = config
        self.agent_token = agent_token
        self.data_dir = data_dir
        self.instance_id = ""
        self.agent_id: str | None = None
        self.url = ""
        self.name = config.name
        self.supported_models: list[str] = []
        self.mirror_url = ""
        """The coordinator whose registry mirror this agent's Ollama pulls through ("" = off)."""
        self.mirror_known = asyncio.Event()
        """Set once a coordinator's reply said whether its mirror is on."""
        self.readiness = Readiness()
        self._ready_once = False
        self.in_flight = 0
        self.bound = asyncio.Event()
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.changed = asyncio.Event()
        """Set when readiness changes, so the next heartbeat goes out at once."""
        self.supported_changed: list[asyncio.Event] = []

    @property
    def initializing(self) -> bool:
        """Not yet ready once (every supported model downloaded and resident). Once ready,
        the agent keeps serving the models it has while it fetches another (a re-download,
        a newly supported model): the coordinator routes per model."""
        if not self._ready_once:
            total = len(self.supported_models)
            self._ready_once = total > 0 and self.readiness.ready(self.supported_models) >= total
        return not self._ready_once

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.agent_token}"}

    def fail(self, code: int) -> None:
        self.exit_code = code
        self.stop.set()

    async def set_supported(self, models: list[str]) -> None:
        if models != self.supported_models:
            self.supported_models = list(models)
            for ev in self.supported_changed:
                ev.set()
            await asyncio.to_thread(
                save_json, self.data_dir / "supported_models.json", self.supported_models
            )


def save_json(path: Path, obj: object) -> None:
    """Atomic write (temp file + rename), so a crash never leaves half a file. Blocking."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_identity(data_dir: Path) -> tuple[str, list[str]]:
    """The stable instance id of this agent (created once) and the last known supported list."""
    private_dir(data_dir)
    id_file = data_dir / "instance_id"
    try:
        instance_id = id_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        instance_id = ""
    if not instance_id:
        instance_id = uuid.uuid4().hex
        id_file.write_text(instance_id + "\n", encoding="utf-8")
    try:
        supported = json.loads((data_dir / "supported_models.json").read_text(encoding="utf-8"))
        if not isinstance(supported, list) or not all(isinstance(m, str) for m in supported):
            supported = []
    except (FileNotFoundError, ValueError):
        supported = []
    return instance_id, supported


RUNTIME = web.AppKey("runtime", Runtime)
