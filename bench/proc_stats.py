"""CPU time and resident memory of benchmark targets, read from ``/proc``: a process and its
descendants, one thread, or the benchmark itself."""

from __future__ import annotations

import os
import resource

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds in user and kernel mode, all threads) of one process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _tree(root: int) -> list[int]:
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p)))}
    pids, i = [root], 0
    while i < len(pids):
        pids.extend(p for p, (ppid, _) in stats.items() if ppid == pids[i])
        i += 1
    return [p for p in pids if p in stats]


def thread_cpu_s(pid: int) -> float:
    """CPU seconds of the main thread of ``pid`` alone (its event loop, for an asyncio app)."""
    with open(f"/proc/{pid}/task/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_s(root: int) -> float:
    """CPU seconds spent so far by ``root`` and its live descendants."""
    return sum(s[1] for p in _tree(root) if (s := _stat(p)))


def tree_rss_mb(root: int) -> float:
    """Resident memory (VmRSS) of ``root`` and its descendants, in MB."""
    kb = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                kb += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return kb / 1024


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
