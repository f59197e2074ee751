"""Fixtures for the catalog API and the dashboard: a fake ollama.com serving fixture pages,
and Chromium (Debian's package) driven by Playwright, with console errors collected and a
screenshot saved when a test fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

FIXTURES = Path(__file__).resolve().parents[1] / "plugins" / "fixtures"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Library:
    """A local stand-in for ollama.com on its own thread and loop.

    ``/library`` serves the listing fixture and ``/library/magistral/tags`` the tags fixture;
    any other model's tags page is a 404. ``mode`` switches it at run time: ``ok``, ``down``
    (HTTP 503), ``layout`` (a page whose structure changed), ``slow`` (answers after
    ``delay`` seconds). ``hits`` counts requests by path.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.hits: dict[str, int] = {}
        self.url = ""
        self._listing = (FIXTURES / "library.html").read_text()
        self._tags = (FIXTURES / "tags.html").read_text()
        self._layout = (FIXTURES / "layout-changed.html").read_text()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fake-library", daemon=True)

    async def _page(self, request: web.Request) -> web.Response:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "down":
            return web.Response(status=503, text="upstream unavailable")
        if self.mode == "layout":
            return web.Response(text=self._layout, content_type="text/html")
        if request.path == "/library":
            return web.Response(text=self._listing, content_type="text/html")
        if request.match_info.get("name") == "magistral":
            return web.Response(text=self._tags, content_type="text/html")
        return web.Response(status=404, text="not found")

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/library", self._page)
        app.router.add_get("/library/{name}/tags", self._page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def start(self) -> Library:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake library did not start")
        return self

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def library() -> Iterator[Library]:
    lib = Library().start()
    yield lib
    lib.close()


def closed_port_url() -> str:
    """A URL nothing listens on: the library is unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        why = "Debian's chromium package is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(why + "; scripts/test installs it, so CI must have it")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Ui:
    """One browser page; records console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")

    def assert_no_console_errors(self) -> None:
        assert self.errors == [], "errors in the browser console:\n" + "\n".join(self.errors)

    def login(self, url: str, token: str) -> None:
        self.page.goto(f"{url}/?token={token}")
        self.page.wait_for_selector("#nav:not([hidden])")
        self.page.wait_for_selector('#live[data-state="on"]')

    def mark(self) -> None:
        """A flag in the page's JS state: still there later means the page was not reloaded."""
        self.page.evaluate("window.__notReloaded = true")

    def assert_not_reloaded(self) -> None:
        assert self.page.evaluate("window.__notReloaded === true"), "the page was reloaded"


def _new_ui(
    browser: Any, request: pytest.FixtureRequest, tmp_path: Path, width: int
) -> Iterator[Ui]:
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    ui = Ui(page)
    yield ui
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
        if ui.errors:
            print("browser console errors:\n" + "\n".join(ui.errors))
    context.close()


@pytest.fixture
def ui(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ui]:
    yield from _new_ui(browser, request, tmp_path, 1280)


@pytest.fixture
def narrow_ui(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ui]:
    yield from _new_ui(browser, request, tmp_path, 400)
