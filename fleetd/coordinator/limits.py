"""Per-key limits: requests per minute and tokens per (UTC) day, in fixed windows.

What a key spent in the current window is what the database said at the last sync (every
coordinator's flushed usage) plus what this coordinator counted since. Requests count when
admitted; tokens only once a reply has ended (that is when Ollama reports them), so a key
can overshoot its token budget by what its requests in flight produce. With several
coordinators, each sees the others' spending at most one sync interval late (usage.py).
"""

from __future__ import annotations

import math

from fleetd.core.errors import ApiError
from fleetd.core.keystore import KeyRow

MINUTE = 60
DAY = 86400


class _Spend:
    """One key's counts in its current minute and day: synced base, being flushed, local."""

    __slots__ = ("day", "flushing", "minute", "requests", "synced", "tokens")

    def __init__(self) -> None:
        self.minute = 0
        self.day = 0
        self.synced = (0, 0)
        """(requests this minute, tokens today) from the database at the last sync."""
        self.flushing = (0, 0)
        """Counted here and being written now: in neither ``synced`` nor the locals."""
        self.requests = 0
        self.tokens = 0

    def roll(self, now: float) -> None:
        minute = int(now) // MINUTE * MINUTE
        if minute != self.minute:
            self.minute = minute
            self.synced = (0, self.synced[1])
            self.flushing = (0, self.flushing[1])
            self.requests = 0
        day = int(now) // DAY * DAY
        if day != self.day:
            self.day = day
            self.synced = (self.synced[0], 0)
            self.flushing = (self.flushing[0], 0)
            self.tokens = 0

    def spent(self) -> tuple[int, int]:
        return (
            self.synced[0] + self.flushing[0] + self.requests,
            self.synced[1] + self.flushing[1] + self.tokens,
        )


def rate_limited(message: str, retry_after: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(seconds)})


def model_not_allowed(key: KeyRow, model: str) -> ApiError:
    allowed = ", ".join(key.models or ())
    return ApiError(
        403,
        "model_not_allowed",
        f"API key {key.name!r} may not use model {model!r} (it may use: {allowed})",
        param="model",
    )


class Limiter:
    """The spending of limited keys; keys without limits cost nothing here."""

    def __init__(self) -> None:
        self._spend: dict[str, _Spend] = {}

    def admit(self, key: KeyRow, model: str, now: float) -> None:
        """Count one request of ``key`` for ``model``, or refuse it: 403, 429."""
        if key.models is not None and model not in key.models:
            raise model_not_allowed(key, model)
        rpm, tpd = key.requests_per_minute, key.tokens_per_day
        if rpm is None and tpd is None:
            return
        s = self._spend.get(key.id)
        if s is None:
            s = self._spend[key.id] = _Spend()
        s.roll(now)
        requests, tokens = s.spent()
        if rpm is not None and requests >= rpm:
            raise rate_limited(
                f"API key {key.name!r} reached its limit of {rpm} requests per minute; "
                "retry after the Retry-After seconds",
                s.minute + MINUTE - now,
            )
        if tpd is not None and tokens >= tpd:
            raise rate_limited(
                f"API key {key.name!r} used its {tpd} tokens for today (UTC; {tokens} "
                "counted); retry after the Retry-After seconds",
                s.day + DAY - now,
            )
        s.requests += 1

    def spent_tokens(self, key_id: str, tokens: int, now: float) -> None:
        s = self._spend.get(key_id)
        if s is not None and tokens:
            s.roll(now)
            s.tokens += tokens

    def begin_flush(self) -> None:
        """The local counts are about to be written: keep them aside until the next sync."""
        for s in self._spend.values():
            s.flushing = (s.flushing[0] + s.requests, s.flushing[1] + s.tokens)
            s.requests = s.tokens = 0

    def end_flush(self, totals: dict[str, tuple[int, int]] | None, now: float) -> None:
        """``totals`` read back from the database after the write (None: the write failed,
        and the counts go back to local, to be written next time)."""
        for key_id, s in self._spend.items():
            if totals is None:
                s.requests += s.flushing[0]
                s.tokens += s.flushing[1]
            else:
                s.roll(now)
                s.synced = totals.get(key_id, (0, 0))
            s.flushing = (0, 0)
