"""Background loops: one that dies is logged at once and reported until its owner stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fleetd.core.background import background, dead_loops


async def test_a_loop_that_dies_is_logged_and_reported_until_its_owner_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    died = asyncio.Event()

    async def sweep() -> None:
        died.set()
        raise RuntimeError("disk on fire")

    async with background(sweep(), "sweep"):
        await died.wait()
        await asyncio.sleep(0)  # the done-callback runs on the next loop turn
        assert dead_loops() == ["sweep: RuntimeError('disk on fire')"]
        assert any(
            r.levelno == logging.ERROR and "background loop sweep died" in r.getMessage()
            for r in caplog.records
        )
    assert dead_loops() == []


async def test_a_running_loop_is_not_reported() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with background(forever(), "forever"):
        await started.wait()
        assert dead_loops() == []
