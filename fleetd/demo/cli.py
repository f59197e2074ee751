"""``fleetd demo``'s command line: options, the signal handling, the exit code."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import click

from fleetd.core.server import run, split_listen
from fleetd.demo.fleet import DEFAULT_LISTEN, Demo
from fleetd.demo.processes import DemoError
from fleetd.sim.options import parse_bytes

BANDWIDTH_BPS = 15e6
"""One pull's speed at ``--speed 1``: the largest model takes about 45 s on the fastest host."""


def parse_speed(text: str) -> float:
    """Bytes/s of one pull: ``2`` or ``2x`` multiplies the default, ``50MB`` is a rate."""
    plain = text.strip().lower().removesuffix("x")
    try:
        factor = float(plain)
    except ValueError:
        rate = parse_bytes(text)
    else:
        rate = factor * BANDWIDTH_BPS
    if not rate > 0:
        raise ValueError(f"expected a positive multiplier or rate, got {text!r}")
    return rate


async def _main(demo: Demo) -> int:
    """0 when stopped by a signal, 1 when something failed to start or died on its own."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(demo.run(), name="demo")
    stopping = asyncio.create_task(stop.wait(), name="demo signal")
    code = 0
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()
    except DemoError as e:
        click.echo(f"fleetd demo: {e}", err=True)
        code = 1
    finally:
        for task in (running, stopping):
            task.cancel()
        await asyncio.gather(running, stopping, return_exceptions=True)
        click.echo("\nstopping the demo fleet…")
        await demo.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return code


def _speed(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_speed(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


@click.command("demo")
@click.option(
    "--agents", type=click.IntRange(1, 32), default=3, show_default=True, help="How many agents."
)
@click.option(
    "--speed",
    default="1",
    show_default=True,
    callback=_speed,
    metavar="FACTOR|RATE",
    help="Download speed: a multiplier (2, 0.5x) or one pull's rate (50MB).",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="The coordinator's address (the dashboard); port 0 picks a free one.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep state and logs here (default: a temporary dir removed on exit).",
)
@click.option(
    "--library-url",
    default=None,
    metavar="URL",
    help="Model library for the catalog (default: the simulated registry's own library pages, "
    "so every listed model can be pulled; https://ollama.com lists the real library).",
)
def demo(
    agents: int, speed: float, listen: str, data_dir: str | None, library_url: str | None
) -> None:
    """Run a coordinator and agents on simulated GPUs and Ollama servers until Ctrl-C."""
    try:
        split_listen(listen)
    except ValueError:
        raise click.BadParameter(
            f"expected HOST:PORT, got {listen!r}", param_hint="--listen"
        ) from None
    keep = data_dir is not None
    path = (
        Path(data_dir).expanduser() if data_dir else Path(tempfile.mkdtemp(prefix="fleetd-demo-"))
    )
    try:
        code = run(_main(Demo(agents, speed, listen, path.resolve(), keep, library_url)))
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    sys.exit(code)
