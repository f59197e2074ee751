"""Go's time formats as Ollama speaks them: duration strings in, RFC 3339 (nanoseconds) out.

Clients meet these exact spellings from the real server (``"5m"``, ``"1h30m"``, timestamps
with up to nine fractional digits), so the simulator produces and accepts the same.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

# Go's time.Duration(math.MaxInt64): what Ollama stores for a negative keep_alive. It puts
# expires_at about 292 years ahead (year 2318).
FOREVER_S = 9_223_372_036.854775807
DEFAULT_KEEP_ALIVE_S = 300.0

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_TERM = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    """A keep_alive string Go's time.ParseDuration would reject (message as Go words it)."""


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``"5m"``, ``"-1h"``, ``"1h30m"``, ``"0"``)."""
    s, sign = text, 1.0
    if s[:1] in ("+", "-"):
        s, sign = s[1:], (-1.0 if s[0] == "-" else 1.0)
    if s == "0":
        return 0.0
    if not s:
        raise DurationError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            unit_missing = re.fullmatch(r"[0-9.]+", s[pos:]) is not None
            why = "missing unit in duration" if unit_missing else "invalid duration"
            raise DurationError(f'time: {why} "{text}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def keep_alive_seconds(value: float | str) -> float:
    """A request's keep_alive as Ollama reads it: seconds, negative meaning forever."""
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER_S if seconds < 0 else seconds


def format_ns(epoch_ns: int) -> str:
    """RFC 3339 with trailing-zero-trimmed nanoseconds, UTC, as Go's time.Time marshals."""
    seconds, frac = divmod(epoch_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


def now_ns() -> int:
    return time.time_ns()


def after_ns(seconds: float) -> int:
    """Wall-clock nanoseconds ``seconds`` from now (a keep_alive deadline)."""
    return now_ns() + int(seconds * 1e9)
