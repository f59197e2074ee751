"""Usage accounting per key, model and minute, kept off the hot path.

A request costs a few dictionary updates here: it is counted when admitted, its reply's bytes
pass a ``Meter`` (which keeps references to the last chunks and counts event separators),
and when the reply ends its token counts are read from the reply's last JSON object: OpenAI's
``usage`` or Ollama's ``prompt_eval_count``/``eval_count``. Every ``SYNC_S`` seconds one task
writes the counts to the database in one batch, reads back every coordinator's totals for
the limits, and reloads the keys (so a revocation elsewhere reaches this coordinator).
``on_end`` listeners (the charts' history) see each reply's counts, and the agent that
answered it (``Meter.agent``, set by the gateway), as it ends.

The meter is handed to the gateway and the relay as an argument, never stored on the request:
a request that refers to its meter while the meter refers back forms a cycle, which keeps
the whole request (headers, parser, writer) alive until the garbage collector's next pass,
and those passes then cost more than the accounting itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import msgspec
from aiohttp import web

from fleetd.coordinator.keys import KEYS, KeyRing
from fleetd.coordinator.limits import Limiter
from fleetd.coordinator.metrics import METRICS, Metrics
from fleetd.coordinator.settings import SETTINGS
from fleetd.core.background import background
from fleetd.core.errors import ApiError
from fleetd.core.keystore import KeyRow, KeyWatch, UsageRow
from fleetd.core.store import STORE, Store

log = logging.getLogger("fleetd.usage")

SYNC_S = 2.0
"""How often usage is written and every coordinator's totals and keys are read back."""
BUCKET_S = 60
PRUNE_S = 3600.0
"""How often rows older than ``usage_retention_days`` are deleted (and once at start)."""

EndListener = Callable[[str, int, int, bool], None]
"""(agent id or "", prompt tokens, completion tokens, failed), as each reply ends."""


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Counts(msgspec.Struct):
    """Token counts in a reply's last object, in either API's words."""

    usage: _Usage | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None


_counts = msgspec.json.Decoder(_Counts)


def _tokens(obj: bytes) -> tuple[int, int] | None:
    try:
        c = _counts.decode(obj)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if c.usage is not None:
        return c.usage.prompt_tokens, c.usage.completion_tokens
    if c.prompt_eval_count is None and c.eval_count is None:
        return None
    return c.prompt_eval_count or 0, c.eval_count or 0


class Meter:
    """One request's reply as it passes; closed by ``done`` or by leaving its ``with``."""

    __slots__ = (
        "_accounts",
        "_body",
        "_events",
        "_failed",
        "_model",
        "_sep",
        "_tail",
        "agent",
        "key",
    )

    def __init__(self, accounts: Accounts, key: KeyRow, model: str) -> None:
        self._accounts = accounts
        self.key = key
        """The caller's key (``OPEN``, ``STATIC`` or a managed one): the gate's turn is per key."""
        self.agent = ""
        """The agent that answered, set by the gateway ("" while none has)."""
        self._model = model
        self._body: bytes | None = None
        self._tail: deque[bytes] | None = None
        """The last chunks of a stream (made at the first: most replies come whole)."""
        self._events = 0
        self._sep = b""
        self._failed = False

    # -- proxy.Meter ---------------------------------------------------------------------

    def body(self, data: bytes) -> None:
        self._body = data

    def chunk(self, data: bytes) -> None:
        tail = self._tail
        if tail is None:
            tail = self._tail = deque(maxlen=3)
            self._sep = b"data:" if data.startswith(b"data:") else b"\n"
        self._events += data.count(self._sep)
        tail.append(data)

    def broken(self) -> None:
        self._failed = True

    # -- the end of the reply -----------------------------------------------------------

    def done(self, resp: web.StreamResponse) -> web.StreamResponse:
        if resp.status >= 400:
            self._failed = True
        return resp

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None and not issubclass(kind, asyncio.CancelledError):
            self._failed = True  # an ApiError answered, or a bug (500)
        if self._body is not None:
            prompt, completion = _tokens(self._body) or (0, 0)
        else:
            prompt, completion = self._stream_counts()
        self._accounts.end(self.key, self._model, prompt, completion, self._failed, self.agent)

    def _stream_counts(self) -> tuple[int, int]:
        if not self._tail:
            return 0, 0
        lines = b"".join(self._tail).split(b"\n")
        done = False
        for line in reversed(lines):
            line = line.strip()
            if line.startswith(b"data:"):
                line = line[5:].strip()
            if line == b"[DONE]":
                done = True
            elif line.startswith(b"{"):
                found = _tokens(line)
                if found is not None:
                    return found
                break
        # No counts (an OpenAI stream without stream_options.include_usage, or one cut short):
        # Ollama sends one token per event; the closing event and [DONE] carry none.
        return 0, max(0, self._events - (2 if done else 0))


class Accounts:
    """Counts not yet written, the limiter, and the sync with the database."""

    def __init__(self, store: Store, keys: KeyRing, metrics: Metrics) -> None:
        self.store = store
        self.keys = keys
        self.metrics = metrics
        self.limiter = Limiter()
        self.pending: dict[tuple[str, str, int], list[int]] = {}
        """(key id, model, minute) -> [requests, errors, prompt tokens, completion tokens]"""
        self.last_used: dict[str, float] = {}
        self.on_end: list[EndListener] = []
        """Called as each reply ends, and for each request the limits refuse (history)."""
        self.lock = asyncio.Lock()
        """Held while syncing and while keys are created or revoked, so that a reload of
        the keys never misses a change made here."""
        self.watch: KeyWatch | None = None
        self._watching: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[None] | None = None
        self._stale = False

    # -- keys changed on other coordinators ----------------------------------------------

    def keep_watching(self) -> None:
        """(Re)subscribe to other coordinators' key changes if the subscription is gone
        (PostgreSQL restarted); in the background, so syncs go on meanwhile."""
        if self.watch is not None and self.watch.alive():
            return
        if self._watching is None or self._watching.done():
            self._watching = asyncio.create_task(self._watch(), name="fleetd-keys-watch")

    async def _watch(self) -> None:
        try:
            self.watch = await self.store.watch_keys(self.keys_changed)
        except Exception as e:
            log.warning(
                "key changes of other coordinators not watched (reloaded every %gs instead): %s",
                SYNC_S,
                e,
            )

    def keys_changed(self) -> None:
        """A key was created or revoked somewhere: reload the keys now, not at the next sync."""
        self._stale = True
        if self._reload is None or self._reload.done():
            self._reload = asyncio.create_task(self._reload_keys(), name="fleetd-keys-reload")

    async def _reload_keys(self) -> None:
        while self._stale:
            self._stale = False
            async with self.lock:
                try:
                    self.keys.replace(await self.store.load_keys())
                except Exception as e:
                    log.warning("keys not reloaded (next try in %gs): %s", SYNC_S, e)
                    return

    async def close(self) -> None:
        for task in (self._watching, self._reload):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self.watch is not None:
            await self.watch.close()

    def _row(self, key_id: str, model: str, now: float) -> list[int]:
        k = (key_id, model, int(now) // BUCKET_S * BUCKET_S)
        row = self.pending.get(k)
        if row is None:
            row = self.pending[k] = [0, 0, 0, 0]
        return row

    def admit(self, key: KeyRow, model: str) -> Meter:
        """Count a request of ``key`` for ``model`` (403/429 if refused); its ``Meter``."""
        now = time.time()
        # Most callers' keys (OPEN, STATIC, managed keys without limits) have nothing to check.
        rpm, tpd = key.requests_per_minute, key.tokens_per_day
        if key.models is not None or rpm is not None or tpd is not None:
            try:
                self.limiter.admit(key, model, now)
            except ApiError:
                row = self._row(key.id, model, now)
                row[0] += 1
                row[1] += 1
                self._ended("", 0, 0, True)
                raise
        self._row(key.id, model, now)[0] += 1
        if key.hash:  # a managed key (not OPEN or STATIC)
            key.last_used_at = now
            self.last_used[key.id] = now
        return Meter(self, key, model)

    def end(
        self,
        key: KeyRow,
        model: str,
        prompt: int,
        completion: int,
        failed: bool,
        agent: str = "",
    ) -> None:
        now = time.time()
        row = self._row(key.id, model, now)
        row[1] += failed
        row[2] += prompt
        row[3] += completion
        if prompt or completion:
            self.limiter.spent_tokens(key.id, prompt + completion, now)
        self._ended(agent, prompt, completion, failed)

    def _ended(self, agent: str, prompt: int, completion: int, failed: bool) -> None:
        for fn in self.on_end:
            try:
                fn(agent, prompt, completion, failed)
            except Exception:
                log.exception("usage listener %r failed", fn)

    def _take(self) -> tuple[list[UsageRow], list[tuple[str, float]]]:
        pending, self.pending = self.pending, {}
        used, self.last_used = self.last_used, {}
        rows = [UsageRow(k, m, b, *counts) for (k, m, b), counts in pending.items()]
        return rows, list(used.items())

    def _export(self, rows: list[UsageRow]) -> None:
        for r in rows:
            name = self.keys.name_of(r.key_id)
            self.metrics.count_key_usage(
                name, r.model, r.requests, r.errors, r.prompt_tokens, r.completion_tokens
            )

    def _put_back(self, rows: list[UsageRow], used: list[tuple[str, float]]) -> None:
        for r in rows:
            row = self.pending.setdefault((r.key_id, r.model, r.bucket), [0, 0, 0, 0])
            for i, n in enumerate((r.requests, r.errors, r.prompt_tokens, r.completion_tokens)):
                row[i] += n
        for key_id, at in used:
            self.last_used[key_id] = max(at, self.last_used.get(key_id, 0.0))

    async def sync(self) -> None:
        """Write what was counted, then read back totals and keys. A database that is down
        keeps the counts here for the next try (and limits count on local figures)."""
        async with self.lock:
            rows, used = self._take()
            self.limiter.begin_flush()
            try:
                if rows or used:
                    await self.store.add_usage(rows, used)
            except Exception as e:
                self._put_back(rows, used)
                self.limiter.end_flush(None, time.time())
                log.warning("usage not written yet, kept for the next try: %s", e)
                return
            self._export(rows)
            now = time.time()
            minute, day = int(now) // 60 * 60, int(now) // 86400 * 86400
            try:
                totals = await self.store.usage_totals(minute, day)
                keys = await self.store.load_keys()
            except Exception as e:
                self.limiter.end_flush(None, now)  # written: counted twice until next time
                log.warning("usage totals and keys not read: %s", e)
                return
            self.limiter.end_flush(totals, now)
            self.keys.replace(keys)

    async def prune(self, retention_days: float) -> None:
        """Delete usage rows past their retention; a failure waits for the next round."""
        before = int(time.time() - retention_days * 86400) // BUCKET_S * BUCKET_S
        try:
            gone = await self.store.prune_usage(before)
        except Exception as e:
            log.warning("old usage rows not deleted (next try in %gs): %s", PRUNE_S, e)
            return
        if gone:
            log.info("deleted %d usage rows older than %g days", gone, retention_days)


ACCOUNTS = web.AppKey("accounts", Accounts)


async def accounts_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx entry: keys loaded before the first request, usage synced every
    ``SYNC_S`` and once more at shutdown."""
    store = app[STORE]
    app[KEYS] = keys = KeyRing()
    keys.replace(await store.load_keys())
    app[ACCOUNTS] = accounts = Accounts(store, keys, app[METRICS])
    retention = app[SETTINGS].usage_retention_days

    async def loop() -> None:
        pruned = -PRUNE_S
        while True:
            if retention and time.monotonic() - pruned >= PRUNE_S:
                pruned = time.monotonic()
                await accounts.prune(retention)
            accounts.keep_watching()
            await asyncio.sleep(SYNC_S)
            try:
                await accounts.sync()
            except Exception:
                log.exception("usage sync failed")

    async with background(loop(), "usage-sync"):
        yield
    await accounts.close()
    await accounts.sync()
