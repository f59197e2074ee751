"""The admin API as ``fleetd ctl`` calls it: where the coordinator is, the admin token, one
aiohttp session, and every failure turned into a ``CtlError`` whose message is one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from fleetd.config import ConfigError, load

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = "/var/lib/fleetd"
TIMEOUT_S = 30.0
EVENTS_IDLE_S = 30.0
"""An event stream silent this long is reopened (the coordinator sends nothing when idle)."""


class CtlError(Exception):
    """What went wrong, in one line, for the operator; the command exits non-zero."""


class Unsupported(CtlError):
    """The coordinator has no route for a feature: it predates it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"this coordinator does not support {what} (upgrade it)")


@dataclass
class Target:
    """Where the coordinator is and the admin token to show it."""

    url: str
    token: str


def _listen_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def resolve(
    url: str | None, config_path: str | None, data_dir: str | None, env: dict[str, str]
) -> Target:
    """Flags first, then the environment, then the coordinator's config file, then defaults."""
    cfg = None
    if config_path is not None:
        try:
            cfg = load(config_path, env={}).coordinator
        except ConfigError as e:
            raise CtlError(str(e)) from None
    url = url or env.get("FLEETD_COORDINATOR") or (cfg and _listen_url(cfg.listen)) or DEFAULT_URL
    if not re.match(r"^https?://[^/\s]+", url):
        raise CtlError(f"--coordinator: expected an http:// or https:// URL, got {url!r}")
    token = env.get("FLEETD_ADMIN_TOKEN", "").strip()
    if not token:
        directory = Path(data_dir or (cfg.data_dir if cfg else DEFAULT_DATA_DIR)).expanduser()
        token = _read_token(directory / "admin_token")
    return Target(url.rstrip("/"), token)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    except OSError as e:
        raise CtlError(
            f"cannot read the admin token file {path}: {e.strerror} "
            "(run as the coordinator's user, or set FLEETD_ADMIN_TOKEN)"
        ) from None
    if not token:
        raise CtlError(
            f"no admin token: set FLEETD_ADMIN_TOKEN, or run on the coordinator's host "
            f"(no token in {path}; --data-dir or --config name another data_dir)"
        )
    return token


def _error_message(body: bytes) -> tuple[str, str]:
    """The server's ``{"error": {"message", "code"}}``, or ("", "") when it is not that."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return "", ""
    if isinstance(err, dict):
        return str(err.get("message") or ""), str(err.get("code") or "")
    if isinstance(err, str):
        return err, ""
    return "", ""


class Client:
    """One session for the whole command; ``async with Client(target) as c``."""

    def __init__(self, target: Target) -> None:
        self.url = target.url
        self._headers = {"Authorization": f"Bearer {target.token}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S, connect=10),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Client in `async with`"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        feature: str = "",
    ) -> Any:
        """The decoded JSON answer. ``feature`` names what a coordinator without this route
        lacks ("draining agents"); routes every coordinator has leave it empty."""
        try:
            async with self.session.request(method, self.url + path, params=params, json=body) as r:
                data = await r.read()
                status = r.status
        except aiohttp.ClientConnectorError as e:
            raise CtlError(f"coordinator unreachable at {self.url}: {_reason(e)}") from None
        except asyncio.TimeoutError:
            raise CtlError(
                f"the coordinator at {self.url} did not answer {method} {path} within "
                f"{TIMEOUT_S:.0f}s"
            ) from None
        except aiohttp.ClientError as e:
            raise CtlError(f"talking to the coordinator at {self.url}: {_reason(e)}") from None
        if status >= 400:
            raise self._http_error(method, path, status, data, feature)
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError:
            raise CtlError(
                f"{self.url}{path} answered HTTP {status} with something that is not JSON; "
                "is it a fleetd coordinator?"
            ) from None

    def _http_error(
        self, method: str, path: str, status: int, body: bytes, feature: str
    ) -> CtlError:
        message, code = _error_message(body)
        if status in (401, 403) and code in ("unauthorized", "forbidden", ""):
            return CtlError(
                f"the coordinator at {self.url} refused the admin token (HTTP {status}); "
                "check FLEETD_ADMIN_TOKEN or the token file"
            )
        # A missing route is aiohttp's 404/405 (fleetd words it "no route for …"), not an
        # answer of the route itself such as unknown_agent.
        if status == 405 or (status == 404 and (not code or message.startswith("no route"))):
            if feature:
                return Unsupported(feature)
            return CtlError(
                f"{self.url} has no {method} {path.split('?')[0]}; is it a fleetd coordinator?"
            )
        return CtlError(message or f"{method} {path}: HTTP {status}")

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``GET /api/events`` as (kind, object) pairs until the stream ends or goes silent
        for EVENTS_IDLE_S; first ("open", {}) once subscribed. Connection problems raise
        CtlError."""
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=EVENTS_IDLE_S)
        try:
            async with self.session.get(self.url + "/api/events", timeout=timeout) as r:
                if r.status >= 400:
                    raise self._http_error("GET", "/api/events", r.status, await r.read(), "")
                yield "open", {}
                kind, buf = "", b""
                # Split by hand: aiohttp's line iterator refuses lines past 128 KiB, and an
                # agent object with many models may be long.
                async for chunk in r.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        raw, buf = buf.split(b"\n", 1)
                        line = raw.decode("utf-8", errors="replace").rstrip("\r")
                        if line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:") and kind:
                            obj = _object(line[5:])
                            if obj is not None:
                                yield kind, obj
                        elif not line:
                            kind = ""
        except aiohttp.ClientConnectorError as e:
            raise CtlError(f"coordinator unreachable at {self.url}: {_reason(e)}") from None
        except (asyncio.TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            return  # the stream ended or went silent: the caller opens it again
        except aiohttp.ClientError as e:
            raise CtlError(f"reading events from {self.url}: {_reason(e)}") from None


def _object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _reason(e: BaseException) -> str:
    cause = getattr(e, "os_error", None)
    # asyncio words a refused connection "Connect call failed (…)": errno says it plainly.
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(e) or type(e).__name__
