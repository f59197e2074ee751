"""A download task's state machine, as plain functions on a ``Task`` (no I/O, no clock but
the timestamps it stamps):

    queued ⇄ waiting (its agent offline) → downloading → completed | failed | cancelled
    failed | cancelled → (retry: attempt + 1) → queued | waiting

The agent's word moves a task forward; the coordinator cancels, fails (an order refused, an
agent gone) and retries. Each retry raises ``attempt``: the agent runs a task id again only
for a higher attempt, and words about an earlier attempt are dropped, so a late report of a
run that was retried cannot overwrite the new run.
"""

from __future__ import annotations

import uuid
from typing import Literal

from fleetd.core.wire import TERMINAL, Agent, Task, TaskUpdate, utcnow

Ending = Literal["completed", "failed", "cancelled"]

Verdict = Literal["stale", "drop", "progress", "ended"]
"""What an agent's update did to its task:

- ``stale``: nothing (about an earlier attempt, or the task already ended that way);
- ``drop``: nothing, and the agent must stop the task (it was cancelled here);
- ``progress``: the task changed and runs on;
- ``ended``: the task reached completed, failed or cancelled.
"""


def new(agent: Agent, model: str, *, redownload: bool = False) -> Task:
    """A task for ``agent``: ``queued``, or ``waiting`` while the agent is offline."""
    return Task(
        id=uuid.uuid4().hex[:16],
        agent_id=agent.id,
        agent_name=agent.name,
        model=model,
        redownload=redownload,
        status="queued" if agent.status == "online" else "waiting",
    )


def take(t: Task, u: TaskUpdate) -> Verdict:
    """Take the agent's word ``u`` on ``t``."""
    if u.attempt < t.attempt:
        return "stale"  # a late word on an earlier attempt
    if t.status in TERMINAL:
        # A task cancelled here while the agent runs it: the agent must stop it.
        return "drop" if t.status == "cancelled" and u.status not in TERMINAL else "stale"
    t.completed_bytes, t.total_bytes = u.completed_bytes, u.total_bytes
    if u.total_bytes > 0:
        t.progress = round(min(1.0, u.completed_bytes / u.total_bytes), 4)
    t.speed_bps, t.eta_s = u.speed_bps, u.eta_s
    if u.source:
        t.source = u.source
    if u.status == "completed" or u.status == "failed" or u.status == "cancelled":
        end(t, u.status, u.error)
        return "ended"
    if u.status == "downloading" and t.started_at is None:
        t.started_at = utcnow()
    t.status = u.status
    return "progress"


def end(t: Task, status: Ending, error: str | None) -> None:
    t.status, t.error = status, error if status == "failed" else None
    t.finished_at = utcnow()
    t.speed_bps, t.eta_s = 0.0, None
    if status == "completed":
        t.progress = 1.0
        t.completed_bytes = max(t.completed_bytes, t.total_bytes)


def wait(t: Task) -> None:
    """The agent went offline: the task waits for it (bytes done are kept)."""
    t.status, t.speed_bps, t.eta_s = "waiting", 0.0, None


def retry(t: Task, *, online: bool) -> None:
    """Run an ended task again as a new attempt, from the start."""
    t.attempt += 1
    t.status = "queued" if online else "waiting"
    t.progress, t.completed_bytes, t.speed_bps, t.eta_s = 0.0, 0, 0.0, None
    t.error, t.started_at, t.finished_at = None, None, None
