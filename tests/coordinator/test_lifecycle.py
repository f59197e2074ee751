"""Start-up and shutdown: plugins are checked before anything is written, every resource opens
in cleanup_ctx, and a start that fails part-way closes what it had opened."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fleetd.config import Config, CoordinatorConfig, Secrets
from fleetd.coordinator.app import build_app
from fleetd.core.errors import StartupError
from fleetd.core.http import CLIENT
from fleetd.core.server import serve
from fleetd.core.store import STORE, SqliteStore
from tests.conftest import Fleet


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fleetd-store" and t.is_alive()]


def test_an_unknown_balancer_fails_start_with_one_line_and_writes_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # No tokens in the environment: a start that got as far as the tokens would write them.
    c = fleet.coordinator(
        data_dir=data_dir,
        env={"FLEETD_ADMIN_TOKEN": "", "FLEETD_AGENT_TOKEN": ""},
        wait=False,
        balancer="fastest",
    )
    assert c.wait_exit(20) == 1
    lines = [line for line in c.log.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "coordinator.balancer = 'fastest': no plugin of that name" in lines[0]
    assert not data_dir.exists() or not list(data_dir.iterdir()), list(data_dir.iterdir())


async def test_an_unknown_plugin_leaves_no_thread_and_no_token_file(tmp_path: Path) -> None:
    before = store_threads()
    config = Config(coordinator=CoordinatorConfig(data_dir=str(tmp_path), catalog="nowhere"))
    with pytest.raises(StartupError, match=r"coordinator\.catalog = 'nowhere'"):
        await build_app(config)
    assert store_threads() == before
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a test's tmp dir, after the fact)


async def test_a_start_failing_part_way_closes_what_it_opened(tmp_path: Path) -> None:
    config = Config(
        coordinator=CoordinatorConfig(data_dir=str(tmp_path)),
        secrets=Secrets(admin_token="a" * 32, agent_token="b" * 32),
    )
    app = await build_app(config)
    opened: dict[str, object] = {}

    async def last_entry_fails(app: web.Application) -> AsyncIterator[None]:
        opened["store"], opened["client"] = app[STORE], app[CLIENT]
        raise StartupError("the last resource cannot open")
        yield  # pragma: no cover

    app.cleanup_ctx.append(last_entry_fails)
    before = store_threads()
    with pytest.raises(StartupError, match="the last resource cannot open"):
        await serve(app, "127.0.0.1:0", "coordinator")
    store, client = opened["store"], opened["client"]
    assert isinstance(store, SqliteStore)
    assert store_threads() == before, "the store's writer thread still runs"
    assert client.closed  # type: ignore[attr-defined]
