"""Talking to one Ollama server: version, installed and loaded models, load/unload, pull.

Replies are decoded leniently (fields come and go across Ollama versions); a reply that is
not what Ollama sends is an ``OllamaError`` naming the server and the problem. ``transient``
marks the failures worth retrying (unreachable server, a stream cut short), as opposed to
Ollama's own verdicts (unknown model, no space left), which retrying cannot change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import msgspec

from fleetd.core.wire import InstalledModel

SHORT = aiohttp.ClientTimeout(total=10, connect=5)


class OllamaError(Exception):
    """Ollama refused, failed or answered something unreadable; the message is one line."""

    def __init__(self, message: str, status: int | None = None, *, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


PULL_STALL_S = 120.0
"""A pull stream silent this long is treated as cut (Ollama sends a line about every 60 ms
while bytes flow, and status lines while it verifies)."""


class _Tag(msgspec.Struct):
    name: str
    size: int = 0
    digest: str = ""
    modified_at: datetime | None = None
    model: str = ""


class _Tags(msgspec.Struct):
    models: list[_Tag] | None = None


class LoadedModel(msgspec.Struct):
    name: str
    size: int = 0
    size_vram: int = 0
    expires_at: datetime | None = None
    model: str = ""


class _Ps(msgspec.Struct):
    models: list[LoadedModel] | None = None


class _Version(msgspec.Struct):
    version: str


class _PullLine(msgspec.Struct):
    status: str = ""
    digest: str = ""
    total: int = 0
    completed: int = 0
    error: str | None = None


class PullProgress:
    """Per-layer byte counts of one pull stream; overall = sum(completed) / sum(total)."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int]] = {}
        self.status = ""

    @property
    def completed(self) -> int:
        return sum(c for c, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    def feed(self, line: _PullLine) -> None:
        self.status = line.status
        if line.digest and line.total > 0:
            self.layers[line.digest] = (min(line.completed, line.total), line.total)


def error_message(body: bytes) -> str:
    """Ollama's ``{"error": "..."}`` text, or the start of whatever else came, on one line."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    text = " ".join(body[:300].decode(errors="replace").split())
    return (text[:200] + "…" if len(text) > 200 else text) or "empty reply"


class Ollama:
    """A client for one Ollama base URL, sharing the process's ClientSession."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/")

    async def _get(self, path: str, type_: type[Any]) -> Any:
        try:
            async with self.session.get(self.url + path, timeout=SHORT) as r:
                body = await r.read()
                if r.status != 200:
                    raise OllamaError(
                        f"Ollama {self.url}{path}: HTTP {r.status}: {error_message(body)}", r.status
                    )
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OllamaError(
                f"Ollama {self.url} unreachable: {e or type(e).__name__}", transient=True
            ) from None
        try:
            return msgspec.json.decode(body, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise OllamaError(f"Ollama {self.url}{path}: unreadable reply: {e}") from None

    async def version(self) -> str:
        v: _Version = await self._get("/api/version", _Version)
        return v.version

    async def tags(self) -> list[InstalledModel]:
        t: _Tags = await self._get("/api/tags", _Tags)
        return [
            InstalledModel(
                name=m.name or m.model, size=m.size, installed_at=m.modified_at, digest=m.digest
            )
            for m in t.models or []
        ]

    async def ps(self) -> list[LoadedModel]:
        p: _Ps = await self._get("/api/ps", _Ps)
        return [m for m in p.models or [] if m.name or m.model]

    async def _post(
        self, path: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> bytes:
        try:
            async with self.session.post(
                self.url + path,
                data=msgspec.json.encode(payload),
                timeout=timeout,
                headers={"Content-Type": "application/json"},
            ) as r:
                body = await r.read()
                if r.status != 200:
                    raise OllamaError(
                        f"Ollama {self.url}{path}: HTTP {r.status}: {error_message(body)}", r.status
                    )
                return body
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OllamaError(
                f"Ollama {self.url} unreachable: {e or type(e).__name__}", transient=True
            ) from None

    async def load(self, model: str, keep_alive: int | str = -1) -> None:
        """Load ``model`` (no prompt) with ``keep_alive``; -1 keeps it resident for good.

        Embedding models refuse ``/api/generate`` ("does not support generate"); they are
        loaded by an ``/api/embed`` with no input instead.
        """
        timeout = aiohttp.ClientTimeout(total=600, connect=5)
        payload: dict[str, Any] = {"model": model, "keep_alive": keep_alive}
        try:
            await self._post("/api/generate", payload, timeout)
        except OllamaError as e:
            if e.status != 400 or "does not support" not in str(e):
                raise
            await self._post("/api/embed", {**payload, "input": []}, timeout)

    async def pull(
        self, model: str, on_progress: Callable[[PullProgress], None], *, insecure: bool = False
    ) -> None:
        """Pull ``model`` through the NDJSON stream, calling ``on_progress`` after every line.
        ``insecure`` lets Ollama reach a ``host:port/...`` registry over plain http.

        Returns on ``success``; raises ``OllamaError`` with Ollama's own message for an error
        (before streaming, or the HTTP-200 final ``{"error"}`` line), and a transient one when
        the server is unreachable or the stream ends without a verdict.
        """
        progress = PullProgress()
        decoder = msgspec.json.Decoder(_PullLine)
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=PULL_STALL_S)
        where = f"Ollama {self.url}"
        try:
            async with self.session.post(
                self.url + "/api/pull",
                data=msgspec.json.encode(
                    {"model": model, "stream": True, **({"insecure": True} if insecure else {})}
                ),
                timeout=timeout,
                headers={"Content-Type": "application/json"},
            ) as r:
                if r.status != 200:
                    body = await r.read()
                    raise OllamaError(
                        f"{where}: pull {model}: HTTP {r.status}: {error_message(body)}",
                        r.status,
                        transient=r.status in (502, 503, 504),
                    )
                async for raw in r.content:
                    text = raw.strip()
                    if not text:
                        continue
                    try:
                        line = decoder.decode(text)
                    except (msgspec.DecodeError, msgspec.ValidationError) as e:
                        snippet = text[:120].decode(errors="replace")
                        raise OllamaError(
                            f"{where}: malformed pull stream line {snippet!r}: {e}"
                        ) from None
                    if line.error is not None:
                        raise OllamaError(line.error or f"{where}: pull failed without a message")
                    progress.feed(line)
                    on_progress(progress)
                    if line.status == "success":
                        return
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OllamaError(
                f"{where}: pull {model} interrupted: {e or type(e).__name__}", transient=True
            ) from None
        except ValueError as e:  # aiohttp: a line longer than its buffer
            raise OllamaError(f"{where}: malformed pull stream: {e}") from None
        raise OllamaError(f"{where}: pull {model} stream ended without success", transient=True)

    async def copy(self, source: str, destination: str) -> None:
        """A second name for the same blobs (no bytes copied)."""
        await self._post("/api/copy", {"source": source, "destination": destination}, SHORT)

    async def delete(self, model: str) -> None:
        try:
            async with self.session.delete(
                self.url + "/api/delete", data=msgspec.json.encode({"model": model}), timeout=SHORT
            ) as r:
                body = await r.read()
                if r.status not in (200, 404):
                    raise OllamaError(
                        f"Ollama {self.url}/api/delete: HTTP {r.status}: {error_message(body)}",
                        r.status,
                    )
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OllamaError(
                f"Ollama {self.url} unreachable: {e or type(e).__name__}", transient=True
            ) from None
