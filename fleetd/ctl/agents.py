"""``fleetd ctl agents``, ``drain``, ``undrain`` and ``remove``."""

from __future__ import annotations

from typing import Any

import click

from fleetd.ctl import tables
from fleetd.ctl.base import as_json, common, emit_json, find_agent, run
from fleetd.ctl.client import Client, CtlError, Unsupported


def status(agent: dict[str, Any]) -> str:
    words = [str(agent.get("status", "?"))]
    if agent.get("draining"):
        words.append("draining")
    elif agent.get("status") == "online" and agent.get("initializing"):
        words.append("initializing")
    return ", ".join(words)


def agents_table(agents: list[dict[str, Any]]) -> str:
    rows = [
        [
            str(a.get("name", "")),
            tables.short_id(str(a.get("id", ""))),
            status(a),
            f"{a.get('ready_models', 0)}/{a.get('total_models', 0)}",
            tables.gpus(a.get("gpus") or []),
            tables.load(a),
            tables.ago(a.get("last_seen")),
        ]
        for a in sorted(agents, key=lambda a: str(a.get("name", "")))
    ]
    headers = ["NAME", "ID", "STATUS", "READY", "GPUS", "LOAD", "LAST SEEN"]
    return tables.table(headers, rows, right=[3])


@click.command("agents")
@common
@click.pass_context
def agents(ctx: click.Context) -> None:
    """List the agents: status, ready models, GPUs, load, last heartbeat."""

    async def body(client: Client) -> None:
        data = await client.call("GET", "/api/agents")
        if as_json(ctx):
            emit_json(data)
        elif not data["agents"]:
            click.echo("no agents have registered yet")
        else:
            click.echo(agents_table(data["agents"]))

    run(ctx, body)


def _switch(verb: str, feature: str, done: str) -> click.Command:
    @click.command(verb)
    @click.argument("agent", metavar="AGENT")
    @common
    @click.pass_context
    def command(ctx: click.Context, agent: str) -> None:
        async def body(client: Client) -> None:
            a = await find_agent(client, agent)
            data = await client.call("POST", f"/api/agents/{a['id']}/{verb}", feature=feature)
            if as_json(ctx):
                emit_json(data)
            else:
                click.echo(f"agent {a['name']} ({a['id']}) {done}")

        run(ctx, body)

    return command


drain = _switch(
    "drain",
    "draining agents",
    "is draining: no new requests or automatic downloads; what it runs finishes",
)
drain.help = "Take AGENT (name or id) out of service: requests in flight finish, no new ones."
undrain = _switch("undrain", "draining agents", "is back in service")
undrain.help = "Put a drained AGENT (name or id) back in service."


@click.command("remove")
@click.argument("agent", metavar="AGENT")
@click.option("--force", is_flag=True, help="Remove it even while it is online.")
@common
@click.pass_context
def remove(ctx: click.Context, agent: str, force: bool) -> None:
    """Forget AGENT (name or id), such as a retired host; its unfinished tasks are cancelled."""

    async def body(client: Client) -> None:
        a = await find_agent(client, agent)
        params = {"force": "true"} if force else None
        try:
            data = await client.call(
                "DELETE", f"/api/agents/{a['id']}", params=params, feature="removing agents"
            )
        except Unsupported:
            raise
        except CtlError as e:
            if not force and a.get("status") == "online" and "force" not in str(e):
                raise CtlError(f"{e} (--force removes it anyway)") from None
            raise
        if as_json(ctx):
            emit_json(data)
        else:
            click.echo(f"removed agent {a['name']} ({a['id']})")

    run(ctx, body)
