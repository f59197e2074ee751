"""The coordinator's admin and agent tokens: where they come from at start and, with
PostgreSQL, how one changed by another coordinator reaches this one without a restart.

SQLite (one coordinator): the environment, else the file in ``data_dir``, else a new one
written there (core/tokens.py).

PostgreSQL (any number of coordinators, one fleet): the database holds the tokens every
coordinator accepts (core/pgtokens.py). At start, for each token:

1. one given in the environment wins and is written to the database: the operator said so,
   and the other coordinators switch to it (a line in the log when it replaces another);
2. else the one stored in the database;
3. else the file in ``data_dir``, so that a coordinator upgraded from SQLite keeps the token
   its agents and admins hold;
4. else a new one.

In cases 3 and 4 it is only stored if no coordinator stored one meanwhile (two starting at
once end with the same). The tokens are then checked (admin ≠ agent, length), and the file
copy in ``data_dir`` kept up to date for ``fleetd ctl`` on this host. A token written to the
database later (another coordinator restarted with a new one) is announced on
``fleetd_tokens``; it takes effect here at once, file copy included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from fleetd.config import Secrets
from fleetd.coordinator.auth import TOKENS, Tokens
from fleetd.core import tokens
from fleetd.core.background import background
from fleetd.core.errors import StartupError
from fleetd.core.pg_conn import Listener
from fleetd.core.pgstore import PgStore
from fleetd.core.pgtokens import NAMES
from fleetd.core.store import STORE, StoreUnavailable

log = logging.getLogger("fleetd.tokens")

WHAT = {"admin_token": "admin token", "agent_token": "agent token"}
ENV = {"admin_token": "FLEETD_ADMIN_TOKEN", "agent_token": "FLEETD_AGENT_TOKEN"}
RECHECK_S = 2.0
"""How often a lost subscription to token changes is tried again."""


def _from_files(data_dir: Path, given: Secrets) -> tuple[str, str]:
    """Blocking. SQLite's coordinator: the environment's tokens, else its own files."""
    admin = tokens.load_or_create(data_dir, "admin_token", given.admin_token, "admin token")
    agent = tokens.load_or_create(data_dir, "agent_token", given.agent_token, "agent token")
    tokens.check_tokens(admin, agent, given.api_keys)
    return admin, agent


class SharedTokens:
    """The tokens of coordinators sharing one PostgreSQL database."""

    def __init__(self, store: PgStore, current: Tokens, data_dir: Path) -> None:
        self.store = store
        self.current = current
        self.data_dir = data_dir
        self.listener: Listener | None = None
        self._changed = asyncio.Event()

    def _values(self) -> dict[str, str]:
        return {"admin_token": self.current.admin, "agent_token": self.current.agent}

    def _use(self, values: dict[str, str]) -> None:
        self.current.admin, self.current.agent = values["admin_token"], values["agent_token"]

    def _write_copies(self, values: dict[str, str], quiet: frozenset[str]) -> None:
        """Blocking. The owner-only copies in ``data_dir``; a copy that held another token
        is said once (except for ``quiet`` names, already said)."""
        for name, value in values.items():
            path = self.data_dir / name
            held = tokens.read_token(path)
            if held == value:
                continue
            try:
                tokens.write_token(path, value)
            except OSError as e:
                log.warning("cannot write the %s's copy %s: %s", WHAT[name], path, e.strerror)
                continue
            if held is not None and name not in quiet:
                log.warning(
                    "%s held another %s than the coordinators sharing the database; "
                    "replaced by theirs",
                    path,
                    WHAT[name],
                )

    async def start(self, given: Secrets) -> None:
        """Choose, check and store the tokens (rules in the module's docstring)."""
        try:
            stored = await self.store.load_secrets()
            files = {
                n: await asyncio.to_thread(tokens.read_token, self.data_dir / n) for n in NAMES
            }
            from_env = {"admin_token": given.admin_token, "agent_token": given.agent_token}
            chosen: dict[str, tuple[str, str]] = {}  # name -> (value, where from)
            for name in NAMES:
                env, db, file = from_env[name], stored.get(name), files[name]
                if env:
                    chosen[name] = (env, "env")
                elif db:
                    chosen[name] = (db, "database")
                elif file:
                    chosen[name] = (file, "file")
                else:
                    chosen[name] = (tokens.new_token(), "new")
            # Checked before anything is written: a refused start leaves the database as it was.
            tokens.check_tokens(chosen["admin_token"][0], chosen["agent_token"][0], given.api_keys)
            final = {name: await self._store(name, *chosen[name]) for name in NAMES}
        except StoreUnavailable as e:
            raise StartupError(
                f"coordinator.database_url: cannot read or store the tokens: {e.message}"
            ) from None
        self._use(final)
        quiet = frozenset(n for n in NAMES if chosen[n][1] in ("env", "new"))
        await asyncio.to_thread(self._write_copies, final, quiet)

    async def _store(self, name: str, value: str, source: str) -> str:
        """``value`` in the database as the rules say; the value to use."""
        if source == "database":
            return value
        if source == "env":
            if await self.store.put_secret(name, value):
                log.warning(
                    "%s replaces the %s stored in the database: every coordinator sharing "
                    "it accepts the new one from now on",
                    ENV[name],
                    WHAT[name],
                )
            return value
        stored, won = await self.store.claim_secret(name, value)
        if won and source == "new":
            log.warning(
                "generated %s %s (stored in the database for every coordinator sharing it, "
                "and in %s, readable by this user only)",
                WHAT[name],
                value,
                self.data_dir / name,
            )
        elif won:
            log.info(
                "%s of %s is now stored in the database, for every coordinator sharing it",
                WHAT[name],
                self.data_dir / name,
            )
        return stored

    async def reload(self) -> None:
        """Take the tokens the database holds now."""
        stored = await self.store.load_secrets()
        now = self._values()
        new = {name: stored.get(name) or now[name] for name in NAMES}
        if new == now:
            return
        if new["admin_token"] == new["agent_token"]:
            log.error("the database holds the same admin and agent token; kept the previous ones")
            return
        for name in NAMES:
            if new[name] != now[name]:
                log.warning(
                    "the %s was changed in the database (by another coordinator); "
                    "accepted from now on, the previous one no longer",
                    WHAT[name],
                )
        self._use(new)
        await asyncio.to_thread(self._write_copies, new, frozenset(NAMES))

    async def follow(self) -> None:
        """Listen for changes; after each (re)subscription read the tokens again, since a
        change may have been missed meanwhile."""
        failing = False
        while True:
            if self.listener is None or not self.listener.alive():
                try:
                    self.listener = await self.store.watch_secrets(self._changed.set)
                except RuntimeError as e:
                    if not failing:
                        log.warning(
                            "token changes of other coordinators not heard (%s); "
                            "trying again every %gs",
                            e,
                            RECHECK_S,
                        )
                        failing = True
                    await asyncio.sleep(RECHECK_S)
                    continue
                if failing:
                    log.info("token changes of other coordinators heard again")
                    failing = False
                self._changed.set()
            try:
                await asyncio.wait_for(self._changed.wait(), RECHECK_S)
            except asyncio.TimeoutError:
                continue
            self._changed.clear()
            if not self.listener.alive():
                continue  # lost: subscribe again first, then read
            try:
                await self.reload()
            except StoreUnavailable as e:
                log.warning("tokens not read again (next try in %gs): %s", RECHECK_S, e.message)
                await asyncio.sleep(RECHECK_S)
                self._changed.set()

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()


CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def tokens_ctx(given: Secrets, data_dir: Path) -> CleanupCtx:
    """Registered right after the store's entry: fills ``app[TOKENS]`` before anything that
    uses them starts (no request is served before every entry has started)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store, current = app[STORE], app[TOKENS]
        if not isinstance(store, PgStore):
            current.admin, current.agent = await asyncio.to_thread(_from_files, data_dir, given)
            yield
            return
        shared = SharedTokens(store, current, data_dir)
        await shared.start(given)
        try:
            async with background(shared.follow(), "token-sync"):
                yield
        finally:
            await shared.close()

    return ctx
