"""``distribute --wait``: one progress bar per agent, fed by ``/api/events``, redrawn in place
on a terminal and printed once, as a final line per agent, anywhere else."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from typing import Any

from fleetd.ctl import tables
from fleetd.ctl.client import Client, CtlError

TERMINAL = frozenset({"completed", "failed", "cancelled"})
BAR = 24
REDRAW_S = 0.1
RECONNECT_S = 1.0
RECONNECT_TRIES = 30


def bar(fraction: float) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * BAR)
    return "[" + "#" * filled + "." * (BAR - filled) + "]"


def describe(task: dict[str, Any]) -> str:
    """What follows the bar: speed and ETA while downloading, the outcome once finished."""
    status = task.get("status", "?")
    if status == "downloading":
        done, total = task.get("completed_bytes") or 0, task.get("total_bytes") or 0
        text = f"{tables.size(done)} of {tables.size(total)}" if total else "downloading"
        if task.get("speed_bps"):
            text += f"  {tables.speed(task['speed_bps'])}"
        if task.get("eta_s") is not None:
            text += f"  ETA {tables.duration(task['eta_s'])}"
        return text
    if status == "completed":
        start, end = (
            tables.parse_time(task.get("started_at")),
            tables.parse_time(task.get("finished_at")),
        )
        took = f" in {tables.duration((end - start).total_seconds())}" if start and end else ""
        return f"completed  {tables.size(task.get('total_bytes'))}{took}"
    if status == "failed":
        return f"failed: {tables.one_line(task.get('error')) or 'no reason given'}"
    if status == "waiting":
        return "waiting for the agent to come back online"
    return str(status)


class Board:
    """The bars of one distribution, keyed by task id, in the order the tasks came."""

    def __init__(
        self,
        tasks: list[dict[str, Any]],
        names: dict[str, str],
        tty: bool,
        write: Callable[[str], None],
    ) -> None:
        self.tasks = {t["id"]: t for t in tasks}
        self.labels = {t["id"]: names.get(t["agent_id"], t["agent_id"]) for t in tasks}
        self.width = max((len(s) for s in self.labels.values()), default=0)
        self.tty = tty
        self._write = write
        self._drawn = 0
        self._last_draw = 0.0
        self._printed: set[str] = set()

    @property
    def done(self) -> bool:
        return all(t.get("status") in TERMINAL for t in self.tasks.values())

    def update(self, task: dict[str, Any]) -> None:
        if task.get("id") in self.tasks:
            self.tasks[task["id"]] = task

    def line(self, task_id: str) -> str:
        t = self.tasks[task_id]
        fraction = float(t.get("progress") or 0.0)
        return (
            f"{self.labels[task_id]:<{self.width}}  {bar(fraction)} {tables.percent(fraction):>4}"
            f"  {describe(t)}"
        )

    def draw(self, force: bool = False) -> None:
        """On a terminal: every bar, over the previous drawing (at most every REDRAW_S).
        Elsewhere: each task's line once, when it has finished."""
        if not self.tty:
            for task_id, t in self.tasks.items():
                if t.get("status") in TERMINAL and task_id not in self._printed:
                    self._printed.add(task_id)
                    self._write(self.line(task_id) + "\n")
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_S:
            return
        self._last_draw = now
        # Lines cut to the terminal's width: a wrapped line would break the cursor arithmetic.
        columns = shutil.get_terminal_size().columns - 1
        out = f"\x1b[{self._drawn}F" if self._drawn else ""
        for task_id in self.tasks:
            out += "\x1b[2K" + self.line(task_id)[:columns] + "\n"
        self._drawn = len(self.tasks)
        self._write(out)


async def watch(client: Client, board: Board, model: str) -> None:
    """Follow the board's tasks until each has finished. After each (re)connection to the
    event stream, the tasks are read once, so nothing that happened before is missed."""
    tries = 0
    while True:
        opened = False
        try:
            async for kind, obj in client.events():
                if kind == "open":
                    opened = True
                    listed = await client.call("GET", "/api/tasks", params={"model": model})
                    for t in listed.get("tasks", []):
                        board.update(t)
                elif kind == "task":
                    board.update(obj)
                else:
                    continue
                board.draw()
                if board.done:
                    board.draw(force=True)
                    return
        except CtlError:
            if tries + 1 >= RECONNECT_TRIES:
                raise
        # A coordinator restarting is worth waiting for; one gone for good is an error.
        tries = 0 if opened else tries + 1
        await asyncio.sleep(RECONNECT_S)
