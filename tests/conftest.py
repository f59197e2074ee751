"""Factory fixtures that start real fleetd processes and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PgServer, session_server
from tests.procs import ADMIN_TOKEN, AGENT_TOKEN, SIM_GPU, Proc, write_toml

TOKENS_ENV = {"FLEETD_ADMIN_TOKEN": ADMIN_TOKEN, "FLEETD_AGENT_TOKEN": AGENT_TOKEN}


class Fleet:
    """Starts processes in a test's tmp dir; everything still running is killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self._n = 0

    def _dir(self, kind: str) -> Path:
        self._n += 1
        d = self.tmp / f"{kind}{self._n}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start(self, args: list[str], env: dict[str, str] | None = None, name: str = "") -> Proc:
        p = Proc(args, env=env, name=name)
        self.procs.append(p)
        return p

    def sim(self, *extra: str, wait: bool = True) -> Proc:
        """``fleetd sim-ollama`` with tiny models and fast downloads unless overridden."""
        defaults = ["--size-scale", "0.0001", "--bandwidth", "2000MB", "--token-delay-ms", "0"]
        p = self.start(["sim-ollama", "--listen", "127.0.0.1:0", *defaults, *extra], name="sim")
        if wait:
            p.wait_url()
        return p

    def coordinator(
        self,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        **settings: Any,
    ) -> Proc:
        data_dir = data_dir or self._dir("coordinator")
        # Hermetic: the coordinator asks its registry before ordering a model (issue 24); port 9
        # refuses at once, so tests that do not set one behave the same with or without internet.
        settings.setdefault("registry_url", "http://127.0.0.1:9")
        # The registry mirror is on by default; tests that are not about it pull directly.
        settings.setdefault("mirror", {"enabled": False})
        cfg = write_toml(data_dir.parent / f"{data_dir.name}.toml", {"coordinator": settings})
        p = self.start(
            [
                "--role",
                "coordinator",
                "--config",
                str(cfg),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
            ],
            env={**TOKENS_ENV, **(env or {})},
            name="coordinator",
        )
        p.data_dir = data_dir  # type: ignore[attr-defined]
        if wait:
            p.wait_url()
        return p

    def agent(
        self,
        coordinator: str,
        ollama: list[str] | str | None = None,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        gpus: list[dict[str, Any]] | None = None,
        wait: bool = True,
        **settings: Any,
    ) -> Proc:
        data_dir = data_dir or self._dir("agent")
        urls = [ollama] if isinstance(ollama, str) else list(ollama or [])
        section: dict[str, Any] = {"heartbeat_interval_s": 0.5, **settings}
        section.setdefault(
            "gpu", {"probe": "static", "devices": gpus if gpus is not None else [SIM_GPU]}
        )
        if urls:
            section["ollama"] = [{"url": u, "models_dir": str(data_dir)} for u in urls]
        cfg = write_toml(data_dir.parent / f"{data_dir.name}.toml", {"agent": section})
        p = self.start(
            [
                "--role",
                "agent",
                "--config",
                str(cfg),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--coordinator",
                coordinator,
            ],
            env={**TOKENS_ENV, **(env or {})},
            name="agent",
        )
        p.data_dir = data_dir  # type: ignore[attr-defined]
        if wait:
            p.wait_url()
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            p.kill()


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for p in f.procs:
            print(f"----- {p.name} log -----\n{p.log}")
    f.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One real PostgreSQL for the whole session, started by the first test that asks."""
    yield from session_server()


@pytest.fixture
def pg_url(postgres: PgServer) -> str:
    """A fresh, empty database on the session's PostgreSQL (URL with password)."""
    return postgres.create_database()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
