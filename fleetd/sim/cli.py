"""``fleetd sim-ollama``: run the Ollama simulator on its own until SIGINT or SIGTERM.

Once the site is up it logs exactly one line, ``sim-ollama listening on http://HOST:PORT``
(the real port when 0 was asked for), so tests and ``fleetd demo`` can find it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
from aiohttp import web

from fleetd.sim.context import SIM
from fleetd.sim.options import DEFAULT_MODELS, FAULT_MESSAGE, Fault, SimOptions, parse_bytes
from fleetd.sim.server import build_app

log = logging.getLogger("fleetd.sim.cli")  # not __main__ under python -m

SHUTDOWN_TIMEOUT_S = 2.0
_DEFAULTS = SimOptions()


def _size(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """A byte count: ``2e9``, ``500MB``, ``80GiB`` (``/s`` allowed for rates)."""
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _models(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    models = dict(DEFAULT_MODELS)
    for item in values:
        name, sep, size = item.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=SIZE, got {item!r}", ctx, param)
        models[name] = int(_size(ctx, param, size))
    return models


_Callback = Callable[[click.Context, click.Parameter, tuple[str, ...]], list[Fault]]


def _faults(kind: str) -> _Callback:
    """Parse ``--fail MODEL@FRACTION:MESSAGE``, ``--interrupt`` or ``--stall MODEL@FRACTION``."""
    form = "MODEL@FRACTION:MESSAGE" if kind == "fail" else "MODEL@FRACTION"

    def parse(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Fault]:
        faults = []
        for item in values:
            model, sep, rest = item.partition("@")
            at, _, message = rest.partition(":")
            try:
                fault = Fault(model, kind, float(at), message or FAULT_MESSAGE)
            except ValueError:
                fault = None
            if fault is None or not (model and sep):
                raise click.BadParameter(f"expected {form}, got {item!r}", ctx, param)
            if (problem := fault.problem()) is not None:
                raise click.BadParameter(problem, ctx, param)
            faults.append(fault)
        return faults

    return parse


@click.command("sim-ollama")
@click.option("--listen", default=_DEFAULTS.listen, show_default=True, metavar="HOST:PORT")
@click.option(
    "--bandwidth",
    callback=_size,
    metavar="SIZE",
    default="200MB",
    show_default=True,
    help="Download speed of one pull, bytes/s (0: instant).",
)
@click.option(
    "--disk",
    callback=_size,
    metavar="SIZE",
    default="2TB",
    show_default=True,
    help="Simulated disk for models.",
)
@click.option(
    "--vram",
    callback=_size,
    metavar="SIZE",
    default="80GiB",
    show_default=True,
    help="Simulated VRAM; loading beyond it evicts models.",
)
@click.option(
    "--max-loaded-models", type=int, default=_DEFAULTS.max_loaded_models, show_default=True
)
@click.option("--max-queue", type=int, default=_DEFAULTS.max_queue, show_default=True)
@click.option("--latency-ms", type=float, default=_DEFAULTS.latency_ms, show_default=True)
@click.option("--token-delay-ms", type=float, default=_DEFAULTS.token_delay_ms, show_default=True)
@click.option("--num-chunks", type=int, default=_DEFAULTS.num_chunks, show_default=True)
@click.option("--load-ms", type=float, default=_DEFAULTS.load_ms, show_default=True)
@click.option(
    "--chunk-interval-s",
    type=float,
    default=_DEFAULTS.chunk_interval_s,
    show_default=True,
    help="Pull progress cadence.",
)
@click.option(
    "--size-scale",
    type=float,
    default=_DEFAULTS.size_scale,
    show_default=True,
    help="Multiply every model size (tiny models for tests).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    callback=_models,
    metavar="NAME=SIZE",
    help="Add a model to the simulated registry (repeatable).",
)
@click.option(
    "--preinstall", multiple=True, metavar="MODEL", help="A model installed at start (repeatable)."
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep installed models and partial downloads across restarts.",
)
@click.option(
    "--fail",
    multiple=True,
    callback=_faults("fail"),
    metavar="MODEL@FRACTION:MESSAGE",
    help="Fail the next pull of MODEL at that fraction (repeatable).",
)
@click.option(
    "--interrupt",
    multiple=True,
    callback=_faults("interrupt"),
    metavar="MODEL@FRACTION",
    help="Cut the next pull of MODEL at that fraction.",
)
@click.option(
    "--stall",
    multiple=True,
    callback=_faults("stall"),
    metavar="MODEL@FRACTION",
    help="Stall the next pull of MODEL at that fraction: no more bytes, same progress lines.",
)
@click.option("--ollama-version", default=_DEFAULTS.version, show_default=True)
def sim_ollama(
    listen: str,
    bandwidth: float,
    disk: float,
    vram: float,
    max_loaded_models: int,
    max_queue: int,
    latency_ms: float,
    token_delay_ms: float,
    num_chunks: int,
    load_ms: float,
    chunk_interval_s: float,
    size_scale: float,
    models: dict[str, int],
    preinstall: tuple[str, ...],
    state_dir: str | None,
    fail: list[Fault],
    interrupt: list[Fault],
    stall: list[Fault],
    ollama_version: str,
) -> None:
    """Run a simulated Ollama server (and model registry) until SIGINT/SIGTERM."""
    options = SimOptions(
        listen=listen,
        bandwidth_bps=bandwidth,
        disk_bytes=int(disk),
        vram_bytes=int(vram),
        max_loaded_models=max_loaded_models,
        max_queue=max_queue,
        latency_ms=latency_ms,
        token_delay_ms=token_delay_ms,
        num_chunks=num_chunks,
        load_ms=load_ms,
        chunk_interval_s=chunk_interval_s,
        size_scale=size_scale,
        models=models,
        preinstalled=list(preinstall),
        state_dir=state_dir,
        faults=fail + interrupt + stall,
        version=ollama_version,
    )
    try:
        app = build_app(options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _run(serve(app, listen))


async def serve(app: web.Application, listen: str) -> None:
    """Serve ``app`` on ``listen`` until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, int(port)).start()
        except OSError as exc:
            raise click.ClickException(f"listen: cannot bind {listen}: {exc.strerror}") from None
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        log.info("sim-ollama listening on http://%s:%d", shown, bound)
        for handler in logging.getLogger().handlers:
            handler.flush()
        await stop.wait()
        sim = app[SIM]
        log.info(
            "sim-ollama: stopping (%d downloads, %d requests in flight; %d models installed)",
            len(sim.puller.active),
            len(sim.in_flight),
            len(sim.store.installed),
        )
    finally:
        await runner.cleanup()


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed, else on the standard loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    sim_ollama()
