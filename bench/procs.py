"""Benchmark targets as subprocesses: started, read until they say where they listen, their
log drained (so a full pipe never stalls them) with its tail kept for error messages."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING_RE = re.compile(r"listening on (http://\S+)")


class Proc:
    """A started subprocess; ``matches`` counts the log lines that matched ``watch``."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, watch: re.Pattern[str] | None = None
    ) -> None:
        self.name = name
        self.proc = proc
        self.url = ""
        self.watch = watch
        self.matches = 0
        self.tail: deque[str] = deque(maxlen=30)
        self.reader: asyncio.Task[None] | None = None

    def _line(self, raw: bytes) -> str:
        line = raw.decode(errors="replace").rstrip()
        self.tail.append(line)
        if self.watch is not None and self.watch.search(line):
            self.matches += 1
        return line

    async def _drain(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self._line(raw)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s (a target under cProfile writes its profile)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            await self.reader


async def spawn(
    name: str, *args: str, env: dict[str, str], watch: re.Pattern[str] | None = None
) -> Proc:
    """Start ``python args…`` and wait up to 30 s for its ``listening on URL`` line; exit the
    benchmark with the process's log when it does not come."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    p = Proc(name, proc, watch)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while not p.url:
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raw = b""
        if not raw:
            proc.kill()
            await proc.wait()
            sys.exit(f"{name} did not start; its log:\n" + "\n".join(p.tail))
        if m := LISTENING_RE.search(p._line(raw)):
            p.url = m.group(1)
    p.reader = asyncio.create_task(p._drain())
    return p
