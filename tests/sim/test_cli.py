"""``sim-ollama`` as a command: the URL line, SIGTERM exits 0, bad options are one line."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from fleetd.sim.cli import sim_ollama

URL = re.compile(rb"sim-ollama listening on (http://127\.0\.0\.1:\d+)")


async def test_subprocess_prints_its_url_and_stops_cleanly_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "fleetd.sim.cli", "--listen", "127.0.0.1:0", "--size-scale", "1e-6"),
        *("--preinstall", "llama3.2:1b"),
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stderr is not None
    try:
        found = None
        while found is None:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=15)
            assert line, "sim-ollama exited before printing its URL"
            found = URL.search(line)
        url = found.group(1).decode()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/tags") as resp:
            assert [m["name"] for m in (await resp.json())["models"]] == ["llama3.2:1b"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        rest = await proc.stderr.read()
        assert b"Traceback" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bandwidth", "fast"], "Invalid value for '--bandwidth'"),
        (["--preinstall", "nope:1b"], "preinstalled: 'nope:1b' is not a model"),
        (["--model", "bad name=1GB"], "models: expected a valid name"),
        (["--fail", "llama3.2:1b@1.5:boom"], "at must be a fraction"),
        (["--listen", "nowhere"], "listen: expected HOST:PORT"),
    ],
)
def test_bad_options_fail_with_one_clear_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(sim_ollama, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
