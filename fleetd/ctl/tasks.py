"""``fleetd ctl tasks`` (list, clear, cancel, retry) and ``distribute`` (``--wait``: bars)."""

from __future__ import annotations

from typing import Any

import click

from fleetd.ctl import tables
from fleetd.ctl.base import (
    agent_names,
    as_json,
    common,
    emit_json,
    find_agent,
    pick,
    run,
    stdout_is_tty,
    warn,
)
from fleetd.ctl.client import Client, CtlError
from fleetd.ctl.progress import Board, watch

STATUSES = ("queued", "downloading", "completed", "failed", "waiting", "cancelled")


def tasks_table(tasks: list[dict[str, Any]], names: dict[str, str]) -> str:
    rows = []
    for t in tasks:
        running = t.get("status") == "downloading"
        rows.append(
            [
                tables.short_id(str(t.get("id", ""))),
                names.get(t.get("agent_id", ""), t.get("agent_name") or t.get("agent_id", "")),
                str(t.get("model", "")),
                str(t.get("status", "")),
                tables.percent(t.get("progress")),
                tables.size(t.get("total_bytes")) if t.get("total_bytes") else tables.NONE,
                tables.speed(t.get("speed_bps")) if running else tables.NONE,
                tables.duration(t.get("eta_s")) if running else tables.NONE,
                tables.ago(t.get("created_at")),
                tables.one_line(t.get("error")),
            ]
        )
    headers = ["ID", "AGENT", "MODEL", "STATUS", "PROGRESS", "SIZE", "SPEED", "ETA", "CREATED"]
    return tables.table([*headers, "ERROR"], rows, right=[4, 5, 6, 7])


@click.group("tasks", invoke_without_command=True)
@click.option("--agent", metavar="AGENT", help="Only this agent's tasks (name or id).")
@click.option("--status", type=click.Choice(STATUSES), help="Only tasks in this state.")
@click.option("--model", metavar="MODEL", help="Only downloads of this model.")
@common
@click.pass_context
def tasks(ctx: click.Context, agent: str | None, status: str | None, model: str | None) -> None:
    """List download tasks, oldest first (clear, cancel, retry: see --help)."""
    if ctx.invoked_subcommand is not None:
        return

    async def body(client: Client) -> None:
        params = {"status": status} if status else {}
        if model:
            params["model"] = model
        if agent:
            params["agent"] = (await find_agent(client, agent))["id"]
        data = await client.call("GET", "/api/tasks", params=params)
        if as_json(ctx):
            emit_json(data)
        elif not data["tasks"]:
            click.echo("no tasks")
        else:
            click.echo(tasks_table(data["tasks"], await agent_names(client)))

    run(ctx, body)


async def _find_task(client: Client, ref: str) -> dict[str, Any]:
    listed = (await client.call("GET", "/api/tasks"))["tasks"]
    return pick(listed, ref, "task", "fleetd ctl tasks lists them")


def _act(verb: str, help_: str) -> click.Command:
    @click.command(verb, help=help_)
    @click.argument("task", metavar="TASK")
    @common
    @click.pass_context
    def command(ctx: click.Context, task: str) -> None:
        async def body(client: Client) -> None:
            t = await _find_task(client, task)
            data = await client.call("POST", f"/api/tasks/{t['id']}/{verb}")
            if as_json(ctx):
                emit_json(data)
            else:
                click.echo(f"task {t['id']} ({t['model']}): {data.get('status', verb)}")

        run(ctx, body)

    return command


tasks.add_command(_act("cancel", "Cancel TASK (id or unique id prefix) if it has not finished."))
tasks.add_command(_act("retry", "Run a failed or cancelled TASK (id or id prefix) again."))


@tasks.command("clear")
@click.option(
    "--status",
    type=click.Choice(["completed", "failed", "cancelled"]),
    help="Only finished tasks in this state (default: every finished task).",
)
@common
@click.pass_context
def clear(ctx: click.Context, status: str | None) -> None:
    """Remove finished tasks from the list (running ones stay)."""

    async def body(client: Client) -> None:
        params = {"status": status} if status else None
        data = await client.call("DELETE", "/api/tasks", params=params, feature="clearing tasks")
        if as_json(ctx):
            emit_json(data)
            return
        removed = data.get("removed", data.get("tasks"))
        count = len(removed) if isinstance(removed, list) else removed
        click.echo(f"removed {count} tasks" if isinstance(count, int) else "removed")

    run(ctx, body)


@click.command("distribute")
@click.argument("model")
@click.option("--all", "to_all", is_flag=True, help="Every online agent.")
@click.option(
    "--agent", "agent_refs", metavar="AGENT", multiple=True, help="An agent (name or id); repeat."
)
@click.option(
    "--if-installed",
    type=click.Choice(["warn", "skip", "redownload"]),
    default="warn",
    show_default=True,
    help="What to do where the model is already installed.",
)
@click.option(
    "--if-offline",
    type=click.Choice(["fail", "retry-when-online"]),
    default="fail",
    show_default=True,
    help="What to do for an agent that is offline.",
)
@click.option("--wait", is_flag=True, help="Show progress until every download has finished.")
@common
@click.pass_context
def distribute(
    ctx: click.Context,
    model: str,
    to_all: bool,
    agent_refs: tuple[str, ...],
    if_installed: str,
    if_offline: str,
    wait: bool,
) -> None:
    """Download MODEL onto agents. With --wait, the exit status is 0 only if every download
    completed."""
    if to_all == bool(agent_refs):
        raise click.UsageError("give either --all or one or more --agent NAME_OR_ID")

    async def body(client: Client) -> int:
        targets: str | list[str] = "all"
        if agent_refs:
            targets = list(dict.fromkeys([(await find_agent(client, r))["id"] for r in agent_refs]))
        request = {
            "model": model,
            "agents": targets,
            "if_installed": if_installed,
            "if_offline": if_offline,
        }
        data = await client.call("POST", "/api/distributions", body=request)
        return await _report(ctx, client, data, wait)

    run(ctx, body)


async def _report(ctx: click.Context, client: Client, data: dict[str, Any], wait: bool) -> int:
    names = await agent_names(client)
    ordered: list[dict[str, Any]] = data.get("tasks", [])
    problems = [
        f"{names.get(e.get('agent_id', ''), e.get('agent_id'))}: {e.get('message', e.get('code'))}"
        for e in data.get("errors", [])
    ]
    if not as_json(ctx):
        for w in data.get("warnings", []):
            if w.get("code") != "already_in_progress":
                warn(f"warning: {w.get('message', w.get('code'))}")
        for p in problems:
            warn(f"error: {p}")
    if wait and ordered:
        shown = not as_json(ctx)
        board = Board(
            ordered, names, tty=stdout_is_tty() and shown, write=_write if shown else _mute
        )
        if shown:
            click.echo(f"{ordered[0]['model']} onto {len(ordered)} agent(s):")
            board.draw(force=True)
        await watch(client, board, ordered[0]["model"])
        ordered = list(board.tasks.values())
        data = {**data, "tasks": ordered}
    if as_json(ctx):
        emit_json(data)
    elif not wait and ordered:
        click.echo(tasks_table(ordered, names))
    if not wait:
        return 1 if problems else 0
    failed = [t for t in ordered if t.get("status") != "completed"]
    for t in failed:
        name = names.get(t["agent_id"], t["agent_id"])
        reason = tables.one_line(t.get("error"))
        problems.append(f"{name}: {t.get('status')}" + (f": {reason}" if reason else ""))
    if problems:
        raise CtlError(
            f"{len(problems)} of {len(ordered) + len(data.get('errors', []))} targets did not "
            f"get the model: " + "; ".join(problems)
        )
    return 0


def _write(text: str) -> None:
    click.echo(text, nl=False)


def _mute(text: str) -> None:
    pass
