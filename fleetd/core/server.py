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

KEEPALIVE_TIMEOUT_S = 20.0
"""Default of ``keepalive_timeout_s``: longer than the keep-alive of common clients (aiohttp
15 s, httpx 5 s), so that they drop an idle connection before the server closes it."""

MAX_NOFILE = 1 << 20
"""Where the soft open-files limit stops when the hard one is unlimited."""


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


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every client, stream and upstream connection
    holds a descriptor, and the usual soft default (1024) is reached by a few hundred streams.
    Logged once, with the figure, so that an operator sees what the process may use."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_NOFILE if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
            return
        log.info("open-files limit raised from %d to %d (the hard limit)", soft, target)
    else:
        log.info("open-files limit %d", soft)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(
    app: web.Application,
    listen: str,
    what: str,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
) -> int:
    """Serve ``app`` until a signal (or ``stop``); log ``<what> listening on URL`` once bound.

    ``keepalive_timeout_s`` closes a connection that has no complete request for that long:
    an idle keep-alive connection, and one whose request line or headers never finish
    (aiohttp 3.14 arms that timer from the moment a connection opens and after each reply,
    and only acts on it while no request is being handled), so half-open sockets cannot
    pile up and lock everyone out."""
    stop = stop or asyncio.Event()
    raise_open_files_limit()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # The handlers stay until the shutdown is over: a repeated signal (a supervisor or
        # script sending SIGTERM twice) must not kill the process with the default action
        # in the middle of the grace period that lets streams end saying why.
        if stop.is_set():
            log.warning(
                "%s already shutting down (requests in flight get up to %gs); "
                "SIGKILL stops it at once",
                what,
                SHUTDOWN_TIMEOUT_S,
            )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    runner = web.AppRunner(
        app,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
        keepalive_timeout=keepalive_timeout_s,
    )
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
        try:
            await runner.cleanup()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return 0
