"""Failed token checks, counted per client address: after a burst an address is answered 429
until its failures age out, and the log gets one line per address and minute, not one per
guess. Shared by both roles; an app without a ``THROTTLE`` checks tokens unthrottled."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator

from aiohttp import web

from fleetd.core.errors import ApiError

log = logging.getLogger("fleetd.auth")

MAX_FAILURES = 10
"""Failed checks an address may make within ``WINDOW_S`` before it is refused."""
WINDOW_S = 60.0


class Throttle:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._unreported: dict[str, int] = {}

    def _recent(self, addr: str, now: float) -> deque[float]:
        times = self._failures.get(addr)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[addr]
        return times

    def guard(self, request: web.Request) -> None:
        """429 ``too_many_failures`` for an address that failed too often, before its token is
        even compared (a right guess must not be told apart from a wrong one meanwhile)."""
        if not self._failures:
            return  # the usual case, without looking up the peer's address
        addr = request.remote or "?"
        now = time.monotonic()
        times = self._recent(addr, now)
        if len(times) >= self.max_failures:
            wait = max(1, math.ceil(times[0] + self.window_s - now))
            raise ApiError(
                429,
                "too_many_failures",
                f"too many failed token checks from {addr}; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def failed(self, request: web.Request, what: str) -> None:
        addr = request.remote or "?"
        self._failures.setdefault(addr, deque()).append(time.monotonic())
        n = self._unreported.get(addr, 0)
        if n == 0:
            log.warning(
                "failed token check from %s (%s); more from there are summed up each minute",
                addr,
                what,
            )
        self._unreported[addr] = n + 1

    def report(self) -> None:
        """One summary line per address that kept failing since the last report."""
        for addr, n in self._unreported.items():
            if n > 1:
                log.warning("%d failed token checks from %s in the last minute", n, addr)
        self._unreported.clear()
        now = time.monotonic()
        for addr in list(self._failures):
            self._recent(addr, now)


THROTTLE = web.AppKey("throttle", Throttle)


async def run_throttle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the per-minute summary of ``app[THROTTLE]``."""
    throttle = app[THROTTLE]

    async def report() -> None:
        while True:
            await asyncio.sleep(throttle.window_s)
            throttle.report()

    task = asyncio.create_task(report(), name="token-throttle-report")
    yield
    task.cancel()


def guard(request: web.Request) -> None:
    throttle = request.app.get(THROTTLE)
    if throttle is not None:
        throttle.guard(request)


def failed(request: web.Request, what: str) -> None:
    throttle = request.app.get(THROTTLE)
    if throttle is not None:
        throttle.failed(request, what)
