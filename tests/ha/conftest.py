"""Helpers for tests of coordinators sharing one PostgreSQL: a pair started on one database."""

from __future__ import annotations

from typing import Any

from tests.conftest import Fleet
from tests.distribution.conftest import SMALL, agents
from tests.procs import Proc

TIMEOUT_S = 3.0


def pair(fleet: Fleet, pg_url: str, **settings: Any) -> tuple[Proc, Proc]:
    """A then B on one database; A starts first, so A holds the duties."""
    cfg = {
        "supported_models": SMALL,
        "database_url": pg_url,
        "heartbeat_timeout_s": TIMEOUT_S,
        **settings,
    }
    a = fleet.coordinator(**cfg)
    a.wait_for_line("now runs the offline sweep")
    b = fleet.coordinator(**cfg)
    return a, b


def agent_on(c: Proc, agent_id: str) -> dict[str, Any] | None:
    """``agent_id`` as ``c`` lists it, or None when ``c`` does not list it."""
    return next((x for x in agents(c) if x["id"] == agent_id), None)
