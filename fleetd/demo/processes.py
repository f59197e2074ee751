"""The demo's child processes: each is the real fleetd program, started so that nothing in
the user's current folder can stand in for the fleetd package, logging to its own file."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import fleetd

URL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_URL_RE = re.compile(r"listening on (http://\S+)")
_PR_SET_PDEATHSIG = 1


class DemoError(Exception):
    """Something kept the demo from starting; the message is one line for the user."""


def fleetd_command() -> tuple[list[str], Path | None]:
    """How to start fleetd again, and in which folder: the pex file when running from one
    (its own path comes first on ``sys.path``), else ``-m fleetd`` from the folder that holds
    this very package. ``-m`` puts the current folder first on ``sys.path``, so started from
    a folder holding a ``fleetd/`` directory (a clone's parent) the child would import that
    instead; ``python -P`` avoids it only from Python 3.11, and the floor is 3.10."""
    pex = os.environ.get("PEX")
    if pex:
        return [sys.executable, pex], None
    return [sys.executable, "-m", "fleetd"], Path(fleetd.__file__).resolve().parent.parent


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child if the demo itself is killed."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load after

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def wait_stopped(popen: subprocess.Popen[bytes]) -> None:
    """Blocking: wait up to STOP_TIMEOUT_S for the process to exit."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(STOP_TIMEOUT_S)


class Child:
    """One child process whose output goes to its own log file in the data dir."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.url = ""
        self._log: IO[bytes] = open(log_path, "ab")  # closed in close()
        # Spawned from the loop's thread on purpose: PDEATHSIG follows the thread that forks.
        command, cwd = fleetd_command()
        self.popen = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops children in order
            preexec_fn=_die_with_parent(),  # prctl only: no locks taken after fork
        )

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    async def wait_url(self) -> str:
        """The URL from the child's ``listening on`` line; fails if it exits first."""
        deadline = time.monotonic() + URL_TIMEOUT_S
        while time.monotonic() < deadline:
            text = await asyncio.to_thread(self.log_path.read_text, "utf-8", "replace")
            if m := _URL_RE.search(text):
                self.url = m.group(1)
                return self.url
            if self.popen.poll() is not None:
                raise DemoError(
                    f"{self.name} exited with code {self.popen.returncode} while starting "
                    f"(log: {self.log_path}):\n{await asyncio.to_thread(self.tail)}"
                )
            await asyncio.sleep(0.1)
        raise DemoError(f"{self.name} did not start within {URL_TIMEOUT_S:.0f}s ({self.log_path})")

    def close(self) -> None:
        self._log.close()
