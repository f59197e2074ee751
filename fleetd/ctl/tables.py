"""Plain-text tables and the short forms in their cells: sizes, speeds, durations, "3s ago",
GPUs as ``2×H100 80G``."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

NONE = "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns two spaces apart; the column numbers in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as the API writes it (``…Z`` included, which 3.10 cannot read)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return NONE
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(value: Any, now: datetime | None = None) -> str:
    t = parse_time(value)
    if t is None:
        return NONE
    seconds = ((now or datetime.now(timezone.utc)) - t).total_seconds()
    if seconds < 60:
        return f"{max(0, round(seconds))}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def size(n: float | None) -> str:
    """Decimal units, as Ollama counts model sizes."""
    if n is None:
        return NONE
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def speed(bps: float | None) -> str:
    return size(bps) + "/s" if bps else NONE


def percent(fraction: float | None) -> str:
    return NONE if fraction is None else f"{fraction * 100:.0f}%"


_NOISE = re.compile(r"^(NVIDIA|GeForce|Tesla|\d+\s?GB|HBM\d\w*|PCIe|SXM\d?)$", re.IGNORECASE)


def gpu_name(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``H100``: the model, without vendor and memory words."""
    words = [w for w in name.split() if not _NOISE.match(w)]
    short = " ".join(words) or name
    return re.sub(r"-\d+\s?GB$", "", short, flags=re.IGNORECASE)


def gpus(devices: Sequence[dict[str, Any]]) -> str:
    """``2×H100 80G`` (memory in GiB, as GPU vendors name cards); mixed cards comma-separated."""
    counts: Counter[str] = Counter()
    for d in devices:
        gib = round(int(d.get("memory_bytes") or 0) / 2**30)
        counts[f"{gpu_name(str(d.get('name', '?')))} {gib}G"] += 1
    return ", ".join(f"{n}×{what}" for what, n in counts.items()) or NONE


def load(agent: dict[str, Any]) -> str:
    """Requests in flight and the mean GPU utilization, e.g. ``3 req, 42%``."""
    utils = [g["utilization"] for g in agent.get("gpus", []) if g.get("utilization") is not None]
    text = f"{agent.get('requests_in_flight', 0)} req"
    if utils:
        text += f", {sum(utils) / len(utils) * 100:.0f}%"
    return text


def short_id(value: str, n: int = 8) -> str:
    return value[:n]


def one_line(text: Any) -> str:
    return " ".join(str(text).split()) if text else ""
