"""Starting real fleetd processes for tests: coordinator, agents and sim-ollama on free ports.

Each process is started with ``--listen 127.0.0.1:0`` and found by the ``listening on URL``
line it logs. Stopping sends SIGTERM and expects exit 0; ``kill()`` is ``kill -9``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

_URL_RE = re.compile(r"listening on (http://[^\s]+)")

ADMIN_TOKEN = "test-admin-token"
AGENT_TOKEN = "test-agent-token"

SIM_GPU = {"name": "Sim H100", "memory_bytes": 85_899_345_920}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Sections by dotted name; list-of-tables values are dicts in a list under key ``[[...]]``."""
    lines: list[str] = []
    for name, body in sections.items():
        tables = {
            k: v for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        lines.append(f"[{name}]")
        for k, v in body.items():
            if k not in tables and not isinstance(v, dict):
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in body.items():
            if isinstance(v, dict):
                lines.append(f"[{name}.{k}]")
                for kk, vv in v.items():
                    if isinstance(vv, list) and vv and isinstance(vv[0], dict):
                        continue
                    lines.append(f"{kk} = {toml_value(vv)}")
                for kk, vv in v.items():
                    if isinstance(vv, list) and vv and isinstance(vv[0], dict):
                        for item in vv:
                            lines.append(f"[[{name}.{k}.{kk}]]")
                            lines.extend(f"{a} = {toml_value(b)}" for a, b in item.items())
        for k, items in tables.items():
            for item in items:
                lines.append(f"[[{name}.{k}]]")
                lines.extend(f"{a} = {toml_value(b)}" for a, b in item.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class Proc:
    """A running fleetd process whose log is collected for assertions and failure output."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, name: str = "") -> None:
        self.args = args
        self.name = name or " ".join(args[:3])
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "fleetd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for line in self.popen.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and i >= len(self.lines)):
                    raise AssertionError(
                        f"{self.name}: no line matching {pattern!r} within {timeout}s "
                        f"(exit code {self.popen.poll()}); log:\n{self.log}"
                    )
                self._cond.wait(min(left, 0.2))

    def wait_url(self, timeout: float = 15.0) -> str:
        self.url = self.wait_for_line(_URL_RE.pattern, timeout).group(1)
        return self.url

    def stop(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
            self._reader.join(5)
            return code
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM; log:\n{self.log}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._reader.join(5)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)


def wait_until(
    predicate: Any, timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}; last={last!r}"
    )


def admin(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
