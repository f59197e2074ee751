"""``fleetd db migrate-sqlite``: copy a coordinator's SQLite database into PostgreSQL.

Rows are copied as they are (both stores hold the same msgpack bytes), all tables in one
transaction: the target ends up with exactly the source's rows or, on any error, unchanged.
A target that already holds fleetd rows is refused unless ``--force``, which replaces them,
so running the command again gives the same result. The ``admin_token`` and ``agent_token``
files beside the database go into the same transaction, as the tokens every coordinator of
the target accepts (coordinator/token_sync.py); ``--force`` leaves a stored token the source
has no file for.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from fleetd.config import ConfigError, check_database_url, redact_url
from fleetd.core.errors import StartupError
from fleetd.core.keystore import KEY_COLUMNS, USAGE_COLUMNS
from fleetd.core.pgtokens import NAMES, write_secret
from fleetd.core.store import SqliteStore
from fleetd.core.tokens import read_token

COLUMNS: dict[str, tuple[str, ...]] = {
    "agents": ("id", "url", "instance_id", "data"),
    "tasks": ("id", "agent_id", "status", "data"),
    "installed": ("agent_id", "model", "data"),
    "installed_as_of": ("agent_id", "as_of"),
    "kv": ("key", "value"),
    "api_keys": KEY_COLUMNS,
    "key_usage": USAGE_COLUMNS,
}


def _read_sqlite(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        out = {}
        for table, cols in COLUMNS.items():
            rows = conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
            if table == "installed_as_of":
                rows = [(a, msgspec.convert(t, datetime)) for a, t in rows]
            else:
                rows = [tuple(bytes(v) if isinstance(v, bytes) else v for v in r) for r in rows]
            out[table] = rows
        return out
    finally:
        conn.close()


def _read_tokens(data_dir: Path) -> dict[str, str]:
    out = {}
    for name in NAMES:
        try:
            token = read_token(data_dir / name)
        except OSError as e:
            raise click.ClickException(f"cannot read {data_dir / name}: {e.strerror}") from None
        if token:
            out[name] = token
    return out


async def migrate_sqlite(db: Path, url: str, force: bool) -> dict[str, int]:
    """Copy the SQLite database ``db`` and the token files beside it into ``url``; the rows
    copied per table, and the tokens."""
    # The source's schema is brought to this fleetd's first, as a coordinator start would.
    sqlite = SqliteStore(db)
    try:
        await sqlite.open()
    except Exception as e:
        raise click.ClickException(f"--from {str(db)!r}: cannot open database: {e}") from None
    await sqlite.close()
    rows = await asyncio.to_thread(_read_sqlite, db)
    tokens = await asyncio.to_thread(_read_tokens, db.parent)

    from fleetd.core.pgstore import open_pg_store

    store = await open_pg_store(url, "--to")
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            present = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in COLUMNS}
            present["tokens"] = await conn.fetchval("SELECT count(*) FROM fleetd_secrets")
            if any(present.values()):
                if not force:
                    held = ", ".join(f"{t} {n}" for t, n in present.items() if n)
                    raise click.ClickException(
                        f"--to {redact_url(url)!r}: the database already holds fleetd data "
                        f"({held}); use --force to replace it"
                    )
                await conn.execute(f"TRUNCATE {', '.join(COLUMNS)}")
            for table, cols in COLUMNS.items():
                if rows[table]:
                    await conn.copy_records_to_table(table, records=rows[table], columns=cols)
            for name, token in tokens.items():
                await write_secret(conn, name, token)
    finally:
        await store.close()
    return {**{t: len(r) for t, r in rows.items()}, "tokens": len(tokens)}


@click.group()
def db() -> None:
    """Maintenance of the coordinator's database."""


@db.command("migrate-sqlite")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path),
    help="The coordinator's data_dir, or its fleetd.db file.",
)
@click.option("--to", "url", required=True, metavar="URL", help="postgresql://user@host/dbname")
@click.option("--force", is_flag=True, help="Replace the fleetd data the target already holds.")
def migrate_sqlite_command(source: Path, url: str, force: bool) -> None:
    """Copy a SQLite database (agents, tasks, installed models, catalog cache) and the
    admin_token and agent_token files beside it into PostgreSQL.

    Stop the coordinator first; then start it with database_url set to the same URL.
    """
    db_file = source / "fleetd.db" if source.is_dir() else source
    if not db_file.is_file():
        raise click.ClickException(f"--from {str(source)!r}: no SQLite database there")
    try:
        check_database_url("--to", url)
        counts = asyncio.run(migrate_sqlite(db_file, url, force))
    except (ConfigError, StartupError) as e:
        raise click.ClickException(str(e)) from None
    summary = ", ".join(f"{table} {n}" for table, n in counts.items())
    click.echo(f"copied {summary} from {db_file} to {redact_url(url)}")
