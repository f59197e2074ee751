"""What every ``fleetd ctl`` command shares: the connection options (accepted before or after
the command's name), running a command's coroutine, output as text or JSON, and finding an
agent, task or key by name, id or unique id prefix."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click

from fleetd.core.server import run as run_loop
from fleetd.ctl.client import Client, CtlError, resolve

F = TypeVar("F", bound=Callable[..., Any])

_META = "fleetd.ctl"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # ctx.meta is shared by the group's and the command's contexts: the later one wins.
    if value not in (None, False) and param.name is not None:
        ctx.meta.setdefault(_META, {})[param.name] = value
    return value


_OPTIONS = [
    click.option(
        "--coordinator",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help="The coordinator (default: $FLEETD_COORDINATOR, the --config file's listen "
        "address, or http://127.0.0.1:8080).",
    ),
    click.option(
        "--config",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=_remember,
        help="The coordinator's config file: its listen address and data_dir (token file).",
    ),
    click.option(
        "--data-dir",
        metavar="DIR",
        expose_value=False,
        callback=_remember,
        help="The coordinator's data_dir, to read its admin_token file (default /var/lib/fleetd).",
    ),
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Print the API's JSON instead of a table.",
    ),
]


def common(f: F) -> F:
    """The connection options and --json, on the ``ctl`` group and on every command."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def setting(ctx: click.Context, name: str) -> Any:
    return ctx.meta.get(_META, {}).get(name)


def as_json(ctx: click.Context) -> bool:
    return bool(setting(ctx, "as_json"))


def run(ctx: click.Context, body: Callable[[Client], Awaitable[int | None]]) -> None:
    """Run ``body`` with a client; a CtlError is one line on stderr and exit status 1."""
    # `fleetd --coordinator URL ctl …` (the top-level agent flags) counts too, below ctl's own.
    root = ctx.find_root().params
    # Several (for an agent's failover) name coordinators sharing one fleet: ask the first.
    urls = [u.strip() for arg in root.get("coordinator_urls") or () for u in arg.split(",")]
    try:
        target = resolve(
            setting(ctx, "coordinator") or next((u for u in urls if u), None),
            setting(ctx, "config") or root.get("config_path"),
            setting(ctx, "data_dir") or root.get("data_dir"),
            dict(os.environ),
        )

        async def main() -> int:
            async with Client(target) as client:
                return await body(client) or 0

        code = run_loop(main())
    except CtlError as e:
        click.echo(f"fleetd ctl: {e}", err=True)
        ctx.exit(1)
    except KeyboardInterrupt:
        click.echo("fleetd ctl: interrupted", err=True)
        ctx.exit(130)
    ctx.exit(code)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def warn(message: str) -> None:
    click.echo(message, err=True)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def pick(items: Sequence[dict[str, Any]], ref: str, what: str, listing: str) -> dict[str, Any]:
    """The one item whose id or name is ``ref``, else whose id or name starts with it."""
    ref = ref.strip()
    found = [i for i in items if i.get("id") == ref] or [i for i in items if i.get("name") == ref]
    if not found and ref:
        found = [
            i
            for i in items
            if str(i.get("id", "")).startswith(ref) or str(i.get("name", "")).startswith(ref)
        ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CtlError(f"unknown {what} {ref!r}: no {what} has that name or id ({listing})")
    matches = ", ".join(f"{i.get('name', '?')} ({i.get('id')})" for i in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    raise CtlError(f"{what} {ref!r} is ambiguous: it matches {matches}{more}; give its id")


async def find_agent(client: Client, ref: str) -> dict[str, Any]:
    agents = (await client.call("GET", "/api/agents"))["agents"]
    return pick(agents, ref, "agent", "fleetd ctl agents lists them")


async def agent_names(client: Client) -> dict[str, str]:
    """Agent id → name, with the id's start added where two agents share a name."""
    agents = (await client.call("GET", "/api/agents"))["agents"]
    seen: dict[str, int] = {}
    for a in agents:
        seen[a["name"]] = seen.get(a["name"], 0) + 1
    return {
        a["id"]: a["name"] if seen[a["name"]] == 1 else f"{a['name']} ({a['id'][:8]})"
        for a in agents
    }
