"""Which of the agent's Ollama servers a model goes to, and whether its disk has room.

Each model lives on exactly one server. A model some server already has stays there;
otherwise a supported model goes to the server holding the fewest supported models
(installed or on the way), so their VRAM load spreads across servers; any other model goes
to the server with the most free disk. A server without room for the download (plus
``agent.disk_margin_bytes``) is never chosen. Ties go to the server listed first.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """A server as placement sees it: its URL and the directory its pulls fill."""

    @property
    def url(self) -> str: ...

    @property
    def models_dir(self) -> Path: ...


S = TypeVar("S", bound=Candidate)


class NoRoom(Exception):
    """No candidate server has the disk space; the message gives needed and free bytes."""


def free_bytes(path: Path) -> int:
    """Free space on the file system holding ``path`` (or its nearest existing parent). Blocking."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def human(n: float) -> str:
    """Decimal units, as Ollama prints sizes."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


async def choose(
    servers: Sequence[S],
    model: str,
    need: int,
    margin: int,
    *,
    pinned: str,
    models_on: Mapping[str, set[str]],
    supported: list[str],
) -> S:
    """The server for ``model``: ``pinned`` (a URL) when set, as a resumed download must go
    back to its partial. ``models_on`` maps each reachable server's URL to the models it has
    or is downloading; unreachable servers are not candidates."""
    by_url = {s.url: s for s in servers}
    if pinned in by_url:
        candidates = [by_url[pinned]]
    else:
        reachable = [s for s in servers if s.url in models_on]
        candidates = [s for s in reachable if model in models_on[s.url]] or reachable
    free = {s.url: await asyncio.to_thread(free_bytes, s.models_dir) for s in candidates}
    roomy = [s for s in candidates if free[s.url] >= need + margin]
    if not roomy:
        best = max(candidates, key=lambda s: free[s.url])
        raise NoRoom(
            f"not enough disk space for {model} in {best.models_dir}: needs {human(need)} "
            f"({need} bytes) plus a {human(margin)} safety margin, {human(free[best.url])} "
            f"({free[best.url]} bytes) free"
        )
    if model not in supported:
        return max(roomy, key=lambda s: free[s.url])
    wanted = set(supported)
    return min(roomy, key=lambda s: len(models_on[s.url] & wanted))
