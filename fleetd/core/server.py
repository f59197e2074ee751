"""Running an aiohttp app until SIGINT/SIGTERM: loop choice, bound-URL log line, staged shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

log = logging.getLogger("fleetd")

SHUTDOWN_TIMEOUT_S = 5.0


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when importable, else the stdlib loop (works on 3.10)."""
    try:
        import uvloop
    except ImportError:
        log.debug("uvloop not installed; using the asyncio loop")
        return asyncio.run(main)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    uvloop.install()  # pragma: no cover - 3.10 only
    return asyncio.run(main)  # pragma: no cover


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(
    app: web.Application,
    listen: str,
    what: str,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve ``app`` until a signal (or ``stop``); log ``<what> listening on URL`` once bound."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    try:
        # A cleanup_ctx entry that fails to open ends here; runner.cleanup() below closes
        # the entries opened before it.
        await runner.setup()
        host, port = split_listen(listen)
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            log.error("%s cannot listen on %s: %s", what, listen, e.strerror or e)
            return 1
        bound = runner.addresses[0]
        bound_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        url = f"http://{bound_host}:{bound[1]}"
        log.info("%s listening on %s", what, url)
        if on_started is not None:
            await on_started(url)
        await stop.wait()
        log.info("%s shutting down", what)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return 0
