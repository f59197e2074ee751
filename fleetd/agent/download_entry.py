"""One download task as the agent keeps it (in ``data_dir/downloads.json``) and reports it."""

from __future__ import annotations

import msgspec

from fleetd.core.wire import ERROR_MAX, MESSAGE_MAX, TaskStatus, TaskUpdate, clip

REPORT_INTERVAL_S = 0.5
"""Progress goes to the coordinator this often while a download runs (the coordinator and
its dashboards are promised a fresh figure at least once a second), and a running pull's
speed is sampled as often, so each report carries a new speed."""


class Entry(msgspec.Struct, kw_only=True):
    task_id: str
    model: str
    redownload: bool = False
    attempt: int = 0
    status: TaskStatus = "queued"
    completed_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    server: str = ""
    """The Ollama URL it downloads into, once chosen (a resumed pull must go to the same)."""
    deleted: bool = False
    """For a re-download: the old copy is already removed (never remove it twice)."""
    source: str = ""
    """Where it pulls from: the coordinator's mirror, or the registry directly and why."""

    def update(self) -> TaskUpdate:
        return TaskUpdate(
            task_id=self.task_id,
            status=self.status,
            attempt=self.attempt,
            # Ollama's sums can pass the total for a moment; the coordinator refuses that.
            completed_bytes=min(self.completed_bytes, self.total_bytes or self.completed_bytes),
            total_bytes=self.total_bytes,
            speed_bps=round(self.speed_bps, 1),
            eta_s=None if self.eta_s is None else round(self.eta_s, 1),
            error=None if self.error is None else clip(self.error, ERROR_MAX),
            source=clip(self.source, MESSAGE_MAX),
        )
