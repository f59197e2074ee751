"""``fleetd ctl keys`` (list, create, revoke), ``usage`` and ``supported`` (show, set, add,
remove): who may use the fleet, what they spent, and which models it keeps ready."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from fleetd.core.names import InvalidModelName, normalize
from fleetd.ctl import tables
from fleetd.ctl.base import as_json, common, emit_json, pick, run
from fleetd.ctl.client import Client, CtlError

KEYS = "managed API keys"
USAGE = "usage accounting"
SUPPORTED = "changing the supported models at runtime"
LIST_KEYS = "fleetd ctl keys lists them"


def _limits(limits: Any) -> str:
    if not isinstance(limits, dict):
        return tables.NONE
    parts = []
    if limits.get("requests_per_minute"):
        parts.append(f"{limits['requests_per_minute']} req/min")
    if limits.get("tokens_per_day"):
        parts.append(f"{limits['tokens_per_day']} tokens/day")
    return ", ".join(parts) or tables.NONE


def keys_table(keys: list[dict[str, Any]]) -> str:
    rows = [
        [
            tables.short_id(str(k.get("id", ""))),
            str(k.get("name", "")),
            str(k.get("prefix", "")),
            ", ".join(k.get("models") or []) or "all",
            _limits(k.get("limits")),
            tables.ago(k.get("created_at")),
            tables.ago(k.get("last_used_at")) if k.get("last_used_at") else "never",
        ]
        for k in keys
    ]
    headers = ["ID", "NAME", "PREFIX", "MODELS", "LIMITS", "CREATED", "LAST USED"]
    return tables.table(headers, rows)


async def _keys(client: Client) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = (await client.call("GET", "/api/keys", feature=KEYS))["keys"]
    return keys


@click.group("keys", invoke_without_command=True)
@common
@click.pass_context
def keys(ctx: click.Context) -> None:
    """List the managed API keys (create, revoke: see --help)."""
    if ctx.invoked_subcommand is not None:
        return

    async def body(client: Client) -> None:
        listed = await _keys(client)
        if as_json(ctx):
            emit_json({"keys": listed})
        else:
            click.echo(keys_table(listed) if listed else "no managed API keys")

    run(ctx, body)


@keys.command("create")
@click.argument("name")
@click.option("--model", "models", metavar="MODEL", multiple=True, help="Allow only this model.")
@click.option("--requests-per-minute", type=click.IntRange(min=1), help="Rate limit.")
@click.option("--tokens-per-day", type=click.IntRange(min=1), help="Token budget per day.")
@common
@click.pass_context
def create_key(
    ctx: click.Context,
    name: str,
    models: tuple[str, ...],
    requests_per_minute: int | None,
    tokens_per_day: int | None,
) -> None:
    """Create an API key called NAME; the key is shown this once."""

    async def body(client: Client) -> None:
        request: dict[str, Any] = {"name": name}
        if models:
            request["models"] = list(models)
        limits = {"requests_per_minute": requests_per_minute, "tokens_per_day": tokens_per_day}
        if any(limits.values()):
            request["limits"] = {k: v for k, v in limits.items() if v}
        data = await client.call("POST", "/api/keys", body=request, feature=KEYS)
        if as_json(ctx):
            emit_json(data)
        else:
            click.echo(f"created key {data.get('name', name)} ({data.get('id')}):")
            click.echo(str(data.get("key")))
            click.echo("Store it now: it is not shown again.", err=True)

    run(ctx, body)


@keys.command("revoke")
@click.argument("key", metavar="KEY")
@common
@click.pass_context
def revoke_key(ctx: click.Context, key: str) -> None:
    """Revoke KEY (its name or id) at once."""

    async def body(client: Client) -> None:
        k = pick(await _keys(client), key, "key", LIST_KEYS)
        data = await client.call("DELETE", f"/api/keys/{k['id']}", feature=KEYS)
        if as_json(ctx):
            emit_json(data)
        else:
            click.echo(f"revoked key {k.get('name')} ({k['id']})")

    run(ctx, body)


_RELATIVE = re.compile(r"^(\d+)([mhd])$")


def since_param(value: str, now: datetime | None = None) -> str:
    """``--since``: an ISO 8601 time, or a span back from now such as ``30m``, ``24h``, ``7d``."""
    m = _RELATIVE.match(value.strip())
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        then = (now or datetime.now(timezone.utc)) - timedelta(**{unit: int(m.group(1))})
        return then.isoformat(timespec="seconds").replace("+00:00", "Z")
    if tables.parse_time(value) is None:
        raise CtlError(
            f"--since: expected an ISO 8601 time or a span such as 24h or 7d, got {value!r}"
        )
    return value


@click.command("usage")
@click.option("--key", metavar="KEY", help="Only this key (name or id).")
@click.option("--model", metavar="MODEL", help="Only this model.")
@click.option("--since", metavar="TIME", help="From this time on: ISO 8601, or 30m, 24h, 7d.")
@common
@click.pass_context
def usage(ctx: click.Context, key: str | None, model: str | None, since: str | None) -> None:
    """What each API key spent per model: requests and tokens."""

    async def body(client: Client) -> None:
        params: dict[str, str] = {}
        if key:
            params["key"] = pick(await _keys(client), key, "key", LIST_KEYS)["id"]
        if model:
            params["model"] = model
        if since:
            params["since"] = since_param(since)
        data = await client.call("GET", "/api/usage", params=params, feature=USAGE)
        if as_json(ctx):
            emit_json(data)
        elif not data.get("usage"):
            click.echo("no usage recorded")
        else:
            click.echo(usage_table(data["usage"]))

    run(ctx, body)


def usage_table(rows: list[dict[str, Any]]) -> str:
    fields = ("requests", "prompt_tokens", "completion_tokens")
    body = [
        [str(u.get("key_name") or u.get("key_id") or ""), str(u.get("model", ""))]
        + [str(u.get(f, 0)) for f in fields]
        for u in rows
    ]
    if len(rows) > 1:
        body.append(["TOTAL", ""] + [str(sum(int(u.get(f) or 0) for u in rows)) for f in fields])
    headers = ["KEY", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS"]
    return tables.table(headers, body, right=[2, 3, 4])


def _names(data: Any) -> list[str]:
    models = data.get("models", []) if isinstance(data, dict) else []
    return [m if isinstance(m, str) else str(m.get("name")) for m in models]


@click.group("supported", invoke_without_command=True)
@common
@click.pass_context
def supported(ctx: click.Context) -> None:
    """Show the supported models (set, add, remove: see --help)."""
    if ctx.invoked_subcommand is not None:
        return

    async def body(client: Client) -> None:
        data = await client.call("GET", "/api/supported-models", feature=SUPPORTED)
        if as_json(ctx):
            emit_json(data)
        else:
            click.echo("\n".join(_names(data)) or "no supported models")

    run(ctx, body)


def _normalized(model: str) -> str:
    """``gpt-oss`` is ``gpt-oss:latest``, as the coordinator lists it."""
    try:
        return normalize(model)
    except InvalidModelName:
        raise CtlError(f"invalid model name {model!r}") from None


def _change(verb: str, help_: str) -> click.Command:
    @click.command(verb, help=help_)
    @click.argument("models", metavar="MODEL...", nargs=-1, required=True)
    @common
    @click.pass_context
    def command(ctx: click.Context, models: tuple[str, ...]) -> None:
        async def body(client: Client) -> None:
            given = list(dict.fromkeys(_normalized(m) for m in models))
            new = given
            if verb != "set":
                now = _names(await client.call("GET", "/api/supported-models", feature=SUPPORTED))
                if verb == "add":
                    new = now + [m for m in given if m not in now]
                else:
                    new = [m for m in now if m not in given]
            data = await client.call(
                "PUT", "/api/supported-models", body={"models": new}, feature=SUPPORTED
            )
            if as_json(ctx):
                emit_json(data)
            else:
                listed = _names(data) or new
                click.echo(f"supported models ({len(listed)}): {', '.join(listed)}")

        run(ctx, body)

    return command


supported.add_command(_change("set", "Make MODEL... the whole supported list."))
supported.add_command(_change("add", "Add MODEL... to the supported list."))
supported.add_command(_change("remove", "Take MODEL... off the supported list (stays installed)."))
