"""The ``fleetd`` command: ``--role coordinator|agent``, ``demo``, ``sim-ollama``, ``db``, ``ctl``.

A thin mirror of the config: each flag names the key it overrides. Config and start-up
errors become one line and exit 1; nothing here knows more than how to start a role.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

import click

from fleetd import __version__
from fleetd.config import Config, ConfigError, load
from fleetd.core.errors import StartupError
from fleetd.core.server import run, serve, setup_logging

log = logging.getLogger("fleetd")

GC_THRESHOLDS = (20_000, 10, 10)
"""The coordinator's collector: at CPython's default (700 allocations) a fleet heartbeating
1,000 times a second ran a young collection every few hundred milliseconds, each scanning the
agents' fresh figures that still live (GPU lists, balancer entries): 5 % of its CPU, 12-15 %
on PostgreSQL with twice the agents in memory. At 20,000, most of a request's objects are
freed before a collection looks at them, and a young collection pauses the loop for a few
milliseconds, every several seconds."""


async def run_coordinator(config: Config) -> int:
    from fleetd.coordinator.app import build_app

    app = await build_app(config)
    c = config.coordinator

    async def started(url: str) -> None:
        # What start-up built (modules, classes, the app, the agents and tasks the store
        # held) lives as long as the process: out of the collector's sight, each full
        # collection scans only what came after. A fleet registering at once triggers a few,
        # and each scanned some 50,000 start-up objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    return await serve(
        app,
        c.listen,
        "coordinator",
        on_started=started,
        keepalive_timeout_s=c.keepalive_timeout_s,
    )


async def run_agent(config: Config) -> int:
    from fleetd.agent.app import advertise, build_app
    from fleetd.agent.runtime import STOP

    app = await build_app(config)
    stop = app[STOP]

    async def started(url: str) -> None:
        advertise(app, url)

    code = await serve(
        app,
        config.agent.listen,
        "agent",
        on_started=started,
        stop=stop.event,
        keepalive_timeout_s=config.agent.keepalive_timeout_s,
    )
    return stop.exit_code or code


def start(role: str, config: Config) -> int:
    main_coro = run_coordinator(config) if role == "coordinator" else run_agent(config)
    try:
        return run(main_coro)
    except (StartupError, ConfigError) as e:
        log.error("%s", e)
        return 1


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetd")
@click.option("--role", type=click.Choice(["coordinator", "agent"]), help="Which role to run.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--listen", metavar="HOST:PORT", help="Overrides coordinator.listen / agent.listen.")
@click.option("--data-dir", metavar="DIR", help="Overrides coordinator.data_dir / agent.data_dir.")
@click.option(
    "--coordinator",
    "coordinator_urls",
    metavar="URL",
    multiple=True,
    help="agent.coordinator_url (repeatable or comma-separated: the first that answers).",
)
@click.option("--ollama", "ollama_urls", metavar="URL", multiple=True, help="agent.ollama urls.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.pass_context
def main(
    ctx: click.Context,
    role: str | None,
    config_path: str | None,
    listen: str | None,
    data_dir: str | None,
    coordinator_urls: tuple[str, ...],
    ollama_urls: tuple[str, ...],
    log_level: str,
) -> None:
    """fleetd: turn GPU hosts running Ollama into one managed inference fleet."""
    setup_logging(getattr(logging, log_level.upper()))
    if ctx.invoked_subcommand is not None:
        if role is not None:
            raise click.UsageError(f"--role cannot be combined with {ctx.invoked_subcommand}")
        return
    if role is None:
        click.echo(ctx.get_help())
        ctx.exit(2)
    if role == "coordinator" and (coordinator_urls or ollama_urls):
        flag = "--coordinator" if coordinator_urls else "--ollama"
        raise click.UsageError(
            f"{flag} is an agent flag; it cannot be used with --role coordinator"
        )
    section = role
    overrides: dict[str, Any] = {}
    if listen is not None:
        overrides[f"{section}.listen"] = listen
    if data_dir is not None:
        overrides[f"{section}.data_dir"] = data_dir
    urls = [u.strip() for arg in coordinator_urls for u in arg.split(",") if u.strip()]
    if urls:
        overrides["agent.coordinator_url"] = urls[0] if len(urls) == 1 else urls
    try:
        config = load(config_path, overrides, ollama_urls=list(ollama_urls) or None)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(start(role, config))


@main.group("mirror")
def mirror() -> None:
    """The coordinator's registry mirror."""


@mirror.command("import")
@click.argument("models_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("models", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--data-dir", metavar="DIR", help="Overrides coordinator.data_dir.")
def mirror_import(
    models_dir: str, models: tuple[str, ...], config_path: str | None, data_dir: str | None
) -> None:
    """Copy MODELS from an Ollama models directory into the mirror's cache, every digest
    checked (works while the coordinator runs)."""
    from pathlib import Path

    from fleetd.config import expand
    from fleetd.coordinator.mirror.cache import Cache
    from fleetd.coordinator.mirror.importer import ImportFailed, import_model

    overrides = {"coordinator.data_dir": data_dir} if data_dir is not None else {}
    try:
        config = load(config_path, overrides)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    c = config.coordinator
    cache = Cache(expand(c.data_dir) / "mirror", c.mirror.max_bytes)
    try:
        cache.prepare()
    except OSError as e:
        raise click.ClickException(f"coordinator.data_dir: {cache.root}: {e.strerror}") from None
    for model in models:
        try:
            done = import_model(cache, Path(models_dir), model)
        except ImportFailed as e:
            raise click.ClickException(str(e)) from None
        click.echo(
            f"imported {done.name}: {done.blobs} blobs, {done.bytes} bytes "
            f"({done.copied} bytes copied, the rest already cached)"
        )


def _register_subcommands() -> None:
    from fleetd.ctl.commands import ctl
    from fleetd.dbcli import db
    from fleetd.demo import demo
    from fleetd.sim.cli import sim_ollama

    main.add_command(sim_ollama, "sim-ollama")
    main.add_command(demo, "demo")
    main.add_command(db, "db")
    main.add_command(ctl, "ctl")


_register_subcommands()
